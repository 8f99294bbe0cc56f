"""Low-bit weight matmuls: BitNet b1.58 ternary (2-bit packed) and binary (1-bit
packed) weights, with int8 or floating-point activations, on CPU (AVX-512 VNNI /
VPOPCNTDQ, AVX2, scalar) and CUDA (dp4a GEMV, int8 tensor-core GEMM, popcount).
Formats (stable across versions, the same on every device):

* ternary ``packed`` ``(N, Kp/4)`` uint8, Kp = K rounded up to 128: code = w + 1 (2 bits);
  per 128-weight block of 32 bytes, byte j holds weights ``32*i + j`` in bits ``2i..2i+1``
  (i = 0..3); padding codes are 1 (w = 0).
* ternary ``format="tq1.6"``: ``packed`` ``(N, Kp/320, 64)`` uint8, Kp = K rounded up to 320:
  5 codes per byte in base 3 (1.6 bits per weight); byte j of block b holds
  ``q = ceil(v * 256 / 243)``, ``v = sum_i c_i 3^(4-i)`` with ``c_i`` the code (w + 1) of weight
  ``320*b + 64*i + j`` (i = 0..4); padding codes are 1. Code i is the top base-3 digit of
  ``q * 3^i mod 256``, so a byte decodes with byte adds alone. The 3-D shape tells the formats apart.
* binary ``packed`` ``(N, Kp/8)`` uint8, Kp = K rounded up to 64: bit = (w >= 0), weight k is
  bit ``k % 8`` of byte ``k // 8`` (little-endian); padding bits are 0.

Both are plain uint8 tensors: they save with ``state_dict`` / safetensors.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _C, _native
from . import _checks as chk
from ._native import advise_large, dtype_code, launch_args, ptr
from ._ops import call, define_op

TERNARY_BLOCK, TERNARY16_BLOCK, BINARY_BLOCK = 128, 320, 64
TERNARY_FORMATS = ("tq2", "tq1.6")
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


# --------------------------------------------------------------------------- packing

def _check_to_pack(fn: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must be a real integer or floating tensor, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{fn}: {name} must be 2-D (out_features, in_features), got shape {tuple(t.shape)}")


def _check_finite(fn: str, w: torch.Tensor) -> None:
    if chk.values_readable(w) and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{fn}: w contains NaN or inf")


def _check_format(fn: str, format) -> None:
    if format not in TERNARY_FORMATS:
        raise ValueError(f"{fn}: format must be one of {TERNARY_FORMATS}, got {format!r}")


def ternary_pack(w_q: torch.Tensor, format: str = "tq2") -> torch.Tensor:
    """Pack integer weights in {-1, 0, 1} of shape (N, K) into the ternary format
    (``"tq2"``: 2 bits per weight, ``"tq1.6"``: 5 weights per byte)."""
    _check_to_pack("ternary_pack", "w_q", w_q)
    _check_format("ternary_pack", format)
    if chk.values_readable(w_q) and not bool(((w_q == -1) | (w_q == 0) | (w_q == 1)).all()):
        raise ValueError("ternary_pack: w_q must hold only -1, 0 and 1 (use ternary_quantize for real weights)")
    if format == "tq1.6":
        return _tq16_from_codes((w_q.to(torch.int16) + 1).to(torch.uint8))
    return _ternary_pack(w_q)


def _ternary_pack(w_q: torch.Tensor) -> torch.Tensor:
    N, K = w_q.shape
    Kp = _round_up(max(K, 1), TERNARY_BLOCK)
    codes = torch.ones(N, Kp, dtype=torch.uint8, device=w_q.device)
    codes[:, :K] = (w_q.to(torch.int16) + 1).to(torch.uint8)
    c = codes.view(N, Kp // 128, 4, 32)
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return packed.reshape(N, Kp // 4).contiguous()


def _tq16_from_codes(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in {0, 1, 2} -> tq1.6 (N, Kp/320, 64)."""
    N, K = codes.shape
    nb = _round_up(max(K, 1), TERNARY16_BLOCK) // TERNARY16_BLOCK
    c = torch.ones(N, nb * TERNARY16_BLOCK, dtype=torch.int32, device=codes.device)
    c[:, :K] = codes
    c = c.view(N, nb, 5, 64)
    v = (((c[:, :, 0] * 3 + c[:, :, 1]) * 3 + c[:, :, 2]) * 3 + c[:, :, 3]) * 3 + c[:, :, 4]
    return ((v * 256 + 242) // 243).to(torch.uint8).contiguous()  # ceil(v * 256 / 243) <= 255


def _tq16_codes(packed: torch.Tensor, K: int) -> torch.Tensor:
    """tq1.6 (N, nb, 64) -> (N, K) codes in {0, 1, 2} (uint8)."""
    N, nb = packed.shape[:2]
    q = packed.to(torch.int32)
    digits = []
    for _ in range(5):
        t = q * 3
        digits.append(t >> 8)
        q = t & 255
    return torch.stack(digits, dim=2).reshape(N, nb * TERNARY16_BLOCK)[:, :K].to(torch.uint8)


def _tq2_codes(packed: torch.Tensor, K: int) -> torch.Tensor:
    p = packed.contiguous().view(packed.shape[0], -1, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device).view(1, 1, 4, 1)
    return ((p >> shifts) & 3).reshape(packed.shape[0], -1)[:, :K]


def _tq16_to_tq2(packed: torch.Tensor, K: int) -> torch.Tensor:
    return _ternary_pack(_tq16_codes(packed, K).to(torch.int16) - 1)


def ternary_unpack(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Exact inverse of the packing (either format): (N, K) int8 weights in {-1, 0, 1}."""
    N, K = shape
    _check_packed("ternary_unpack", packed, N, K, 4, TERNARY_BLOCK)
    codes = _tq16_codes(packed, K) if packed.dim() == 3 else _tq2_codes(packed, K)
    return codes.to(torch.int8) - 1


def ternary_quantize(w: torch.Tensor, per_row: bool = False, format: str = "tq2"):
    """BitNet b1.58 absmean quantisation and packing: ``scale = mean|W|`` (per tensor, or per
    output row with ``per_row``; the mean is taken in fp64 and rounded once to fp32),
    ``W_q = clamp(round(W / scale), -1, 1)`` with round half to even. NaN or inf weights raise
    ``ValueError``. Returns ``(packed uint8, scale fp32)``; ``W ~ ternary_unpack(packed, W.shape) * scale``.

    ``format="tq2"``: 2 bits per weight, ``(N, Kp/4)``. ``format="tq1.6"``: 5 weights per byte,
    ``(N, Kp/320, 64)``, 20% fewer bytes for memory-bound decode; the same W_q and scale, and
    :func:`ternary_linear` gives bitwise the same outputs from either."""
    chk.tensor("ternary_quantize", "w", w)
    _check_format("ternary_quantize", format)
    if w.dim() != 2 or w.shape[1] == 0:
        raise ValueError(f"ternary_quantize: w must be (out_features, in_features), got {tuple(w.shape)}")
    packed, scale = _quantize_weight(w, per_row)
    if format == "tq1.6":
        packed = _tq16_from_codes(_tq2_codes(packed, w.shape[1]))
    return packed, scale


def _quantize_weight(w: torch.Tensor, per_row: bool = False):
    # one fused kernel on CPU and CUDA (it rejects NaN / inf itself)
    return call(_absmean_pack_op, w.detach(), per_row)


def binary_pack(signs: torch.Tensor) -> torch.Tensor:
    """Pack (N, K) signs (>= 0 means +1) into the binary format."""
    _check_to_pack("binary_pack", "signs", signs)
    if signs.is_floating_point() and chk.values_readable(signs) and bool(signs.isnan().any()):
        raise ValueError("binary_pack: signs contain NaN")
    N, K = signs.shape
    Kp = _round_up(max(K, 1), BINARY_BLOCK)
    bits = torch.zeros(N, Kp, dtype=torch.uint8, device=signs.device)
    bits[:, :K] = (signs >= 0).to(torch.uint8)
    weights = (1 << torch.arange(8, dtype=torch.uint8, device=signs.device))
    return (bits.view(N, Kp // 8, 8) * weights).sum(-1, dtype=torch.uint8).contiguous()


def binary_unpack(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(N, K) int8 signs in {-1, 1} from the binary format."""
    N, K = shape
    _check_packed("binary_unpack", packed, N, K, 8, BINARY_BLOCK)
    bits = (packed.contiguous().view(N, -1, 1) >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.reshape(N, -1)[:, :K].to(torch.int8) * 2 - 1


def binary_quantize(w: torch.Tensor):
    """``sign(W)`` (sign(0) = +1), 1 bit per weight, and ``alpha = mean|W|`` per output row (taken in
    fp64 and rounded once, so CPU and CUDA give the same bits). Returns ``(packed uint8, alpha fp32 (N,))``."""
    chk.tensor("binary_quantize", "w", w)
    if w.dim() != 2 or w.shape[1] == 0:
        raise ValueError(f"binary_quantize: w must be (out_features, in_features), got {tuple(w.shape)}")
    _check_finite("binary_quantize", w)
    wf = w.detach().float()
    return binary_pack(wf), wf.abs().double().mean(dim=1).float()


def _check_packed(fn, packed, N, K, per_byte, block):
    """packed's shape for K input features; for ternary (per_byte 4) a 3-D tensor is tq1.6."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"{fn}: packed must be a uint8 tensor, got "
                        f"{packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__}")
    if per_byte == 4 and packed.dim() == 3:
        want = (N, _round_up(max(K, 1), TERNARY16_BLOCK) // TERNARY16_BLOCK, 64)
        if tuple(packed.shape) != want:
            raise ValueError(f"{fn}: packed (tq1.6) has shape {tuple(packed.shape)}, expected {want} for {K} "
                             f"input features (5 weights per byte, rows padded to {TERNARY16_BLOCK})")
        return
    want = (N, _round_up(max(K, 1), block) // per_byte)
    if tuple(packed.shape) != want:
        raise ValueError(f"{fn}: packed has shape {tuple(packed.shape)}, expected {want} for {K} input features "
                         f"({per_byte} weights per byte, rows padded to {block})")


# --------------------------------------------------------------------------- kernels as ops

def _rows(x):
    if x.dim() == 2 and x.stride(-1) == 1:  # (the common case, without a reshape: decode calls are short)
        return x
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _device_work(t: torch.Tensor, nbytes: int, device: int):
    """Scratch for the CUDA kernels on t's device (None for the CPU kernels)."""
    return None if device == -1 else torch.empty(max(nbytes, 16), dtype=torch.uint8, device=t.device)


def _absmean_pack_impl(w, per_row):
    w2 = _rows(w.float() if w.dtype == torch.float64 else w)  # the reference works on w.float() too
    N, K = w2.shape
    Kp = _round_up(K, TERNARY_BLOCK)
    packed = torch.empty(N, Kp // 4, dtype=torch.uint8, device=w.device)
    scale = torch.empty((N,) if per_row else (), dtype=torch.float32, device=w.device)
    threads, device, stream = launch_args(w2)
    work = _device_work(w2, 8 * N + 8, device)  # CUDA: fp64 row sums and the NaN/inf flag
    if work is not None:
        work[8 * N:].zero_()
    if not _C.ternary_quantize(ptr(w2), w2.stride(0), ptr(packed), ptr(scale), per_row, N, K, Kp, dtype_code(w2),
                               threads, device, stream, ptr(work)):
        raise ValueError("ternary_quantize: w contains NaN or inf")
    return packed, scale


def _absmean_pack_fake(w, per_row):
    N, K = w.shape
    return (w.new_empty(N, _round_up(K, TERNARY_BLOCK) // 4, dtype=torch.uint8),
            w.new_empty((N,) if per_row else (), dtype=torch.float32))


# fused absmean + round + clamp + pack (CPU): scale summed in fp64, codes as the reference's for that scale
_absmean_pack_op = define_op("ternary_absmean_pack(Tensor w, bool per_row) -> (Tensor, Tensor)",
                             impl=_absmean_pack_impl, fake=_absmean_pack_fake)


def _dequant_impl(packed, scale, K):
    N = packed.shape[0]
    out = advise_large(torch.empty(N, K, dtype=torch.float32, device=packed.device))
    _C.ternary_dequant(ptr(packed), ptr(scale), scale.numel() > 1, ptr(out), N, K, packed.shape[1] * 4,
                       *launch_args(packed))
    return out


def _dequant_fake(packed, scale, K):
    return packed.new_empty(packed.shape[0], K, dtype=torch.float32)


# W_q * scale as a dense fp32 (N, K) matrix (the straight-through backward's dX operand)
_dequant_op = define_op("ternary_dequant(Tensor packed, Tensor scale, int K) -> Tensor",
                        impl=_dequant_impl, fake=_dequant_fake)


def _act_dequant_impl(x):
    x2 = _rows(x)
    out = advise_large(torch.empty(x2.shape, dtype=torch.float32, device=x.device))
    _C.act_quant_dequant(ptr(x2), x2.stride(0), ptr(out), x2.shape[0], x2.shape[1], dtype_code(x2),
                         *launch_args(x2))
    return out.reshape(x.shape)


def _act_dequant_fake(x):
    return x.new_empty(x.shape, dtype=torch.float32)


# x_q / s for int8 per-token activations (the straight-through backward's dW operand)
_act_dequant_op = define_op("act_quant_dequant(Tensor x) -> Tensor", impl=_act_dequant_impl, fake=_act_dequant_fake)


def _mm_impl(a, b):
    M, K = a.shape
    N = b.shape[1]
    c = advise_large(torch.empty(M, N, dtype=torch.float32, device=a.device))
    _C.sgemm(ptr(a), a.stride(0), a.stride(1), ptr(b), b.stride(0), b.stride(1), ptr(c), N, M, N, K,
             *launch_args(a)[:2])
    return c


def _mm_fake(a, b):
    return a.new_empty(a.shape[0], b.shape[1])


# fp32 C = A @ B with A, B of any strides: torch's CPU mm (MKL) runs AVX2 code on AMD cores at
# ~40% of the FMA peak; this blocked AVX-512 GEMM reaches ~80% (the STE backward's two GEMMs)
_mm_op = define_op("mm_f32(Tensor a, Tensor b) -> Tensor", impl=_mm_impl, fake=_mm_fake)


_NOT_INTEL = _C.info()["cpu_vendor"] != "intel"


def _own_gemm_pays() -> bool:
    # MKL picks its kernels by CPU vendor: on Intel it runs AVX-512 code near the peak, on
    # other vendors AVX2 code at ~40% of it, where kernkit's AVX-512 GEMM is ~2x faster
    # (benchmarks/bench_lowbit.py). At the avx2 level the two are about equal.
    return _NOT_INTEL and _C.cpu_isa() == "avx512"


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, through kernkit's GEMM for large fp32 CPU operands where it beats torch's (not
    for narrow outputs or tiny products either)."""
    M, K = a.shape
    N = b.shape[1]
    if a.dtype == b.dtype == torch.float32 and a.is_cpu and b.is_cpu and N >= 64 and M >= 16 \
            and M * N * K >= (1 << 21) and _own_gemm_pays():
        return call(_mm_op, a, b)
    return a @ b


# fp32 activations with more rows than this on a GPU: the weights expanded once and cuBLAS's fp32
# GEMM (kernkit's fp32 kernel is one warp per output feature, a GEMV; bf16/fp16 use its tensor-core
# kernel).
_CUDA_FLOAT_GEMV_MAX_ROWS = 16


def _aligned(packed):
    # the CUDA kernels read packed rows in 16-byte loads (a view at an odd offset is copied once)
    return packed.clone() if packed.data_ptr() % 16 else packed


def _ternary_impl(x, packed, scale, bias, act_bits):
    x2 = _rows(x)
    packed = _aligned(packed)
    M, K = x2.shape
    N, Kp = packed.shape[0], packed.shape[1] * 4
    if x.is_cuda and act_bits == 0 and x.dtype == torch.float32 and M > _CUDA_FLOAT_GEMV_MAX_ROWS:
        w = _dequant_op(packed, torch.ones((), device=x.device), K).to(x.dtype)  # exact: -1, 0, 1
        y = (x2 @ w.t()).float() * scale
        y = (y if bias is None else y + bias).to(x.dtype)
        return y.reshape(*x.shape[:-1], N)
    y = advise_large(torch.empty(M, N, dtype=x.dtype, device=x.device))
    threads, device, stream = launch_args(x)
    work = _device_work(x, _C.lowbit_work_bytes(M, Kp), device)
    _C.ternary_linear(ptr(x2), x2.stride(0), ptr(packed), ptr(scale), scale.numel() > 1, ptr(bias), ptr(y), M, N, K,
                      Kp, act_bits, dtype_code(x), threads, device, stream, ptr(work))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], N)


def _ternary_fake(x, packed, scale, bias, act_bits):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _ternary_setup(ctx, inputs, output):
    x, packed, scale, bias, act_bits = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(packed, scale)
    ctx.K, ctx.dtype = x.shape[-1], x.dtype


def _ternary_backward(ctx, dy):
    # straight-through estimator: dX = dY @ (W_q * scale); the activation quantiser passes gradients through
    packed, scale = ctx.saved_tensors
    if packed.dim() == 3:  # tq1.6
        packed = _tq16_to_tq2(packed, ctx.K)
    dy2 = dy.reshape(-1, dy.shape[-1]).float()
    dx = _matmul(dy2, _dequant_op(packed, scale, ctx.K)).reshape(*dy.shape[:-1], ctx.K).to(ctx.dtype)
    dbias = dy2.sum(0) if ctx.has_bias else None
    return dx, None, None, dbias, None


_ternary_op = define_op(
    "ternary_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias, int act_bits) -> Tensor",
    impl=_ternary_impl, fake=_ternary_fake, backward=_ternary_backward, setup_context=_ternary_setup,
)


def _ternary16_impl(x, packed, scale, bias):
    if launch_args(x)[1] != -1:  # no tq1.6 CUDA kernel (nor under simt): the same outputs from the tq2 one
        return _ternary_impl(x, _tq16_to_tq2(packed, x.shape[-1]), scale, bias, 8)
    x2 = _rows(x)
    M, K = x2.shape
    N, Kp = packed.shape[0], packed.shape[1] * TERNARY16_BLOCK
    y = advise_large(torch.empty(M, N, dtype=x.dtype, device=x.device))
    _C.ternary16_linear(ptr(x2), x2.stride(0), ptr(packed), ptr(scale), scale.numel() > 1, ptr(bias), ptr(y), M, N, K,
                        Kp, dtype_code(x), launch_args(x)[0])
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], N)


def _ternary16_fake(x, packed, scale, bias):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def _ternary16_setup(ctx, inputs, output):
    _ternary_setup(ctx, (*inputs, 8), output)


# tq1.6 weights, int8 activations, CPU (the STE backward converts the weights to tq2 and shares tq2's)
_ternary16_op = define_op(
    "ternary16_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias) -> Tensor",
    impl=_ternary16_impl, fake=_ternary16_fake, backward=lambda ctx, dy: _ternary_backward(ctx, dy)[:4],
    setup_context=_ternary16_setup,
)


def _binary_impl(x, packed, alpha, bias, binarize_input):
    x2 = _rows(x)
    packed = _aligned(packed)
    M, K = x2.shape
    N = packed.shape[0]
    Kp = packed.shape[1] * 8
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    threads, device, stream = launch_args(x)
    work = _device_work(x, _C.lowbit_work_bytes(M, Kp), device)
    _C.binary_linear(ptr(x2), x2.stride(0), ptr(packed), ptr(alpha), ptr(bias), ptr(y), M, N, K,
                     Kp, binarize_input, dtype_code(x), threads, device, stream, ptr(work))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], N)


def _binary_fake(x, packed, alpha, bias, binarize_input):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


_binary_op = define_op(
    "binary_linear(Tensor x, Tensor packed, Tensor alpha, Tensor? bias, bool binarize_input) -> Tensor",
    impl=_binary_impl, fake=_binary_fake,
)


def _check_linear(fn, x, packed, scale, bias, per_byte, block, scale_name, scale_sizes, in_features):
    chk.tensor(fn, "x", x, dtypes=_ACT_DTYPES)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{fn}: x must be (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    if in_features is not None:
        # the packed width only fixes K up to its block: the exact check needs the weight's K
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise TypeError(f"{fn}: in_features must be a positive int, got {in_features!r}")
        if x.shape[-1] != in_features:
            raise ValueError(f"{fn}: x has {x.shape[-1]} input features (last dim), but the packed weight has "
                             f"in_features={in_features}")
    if not isinstance(packed, torch.Tensor) or packed.dim() not in ((2, 3) if per_byte == 4 else (2,)):
        raise ValueError(f"{fn}: packed must be a 2-D uint8 tensor (out_features, packed bytes)"
                         + (" or a 3-D tq1.6 one (out_features, blocks, 64)" if per_byte == 4 else ""))
    _check_packed(fn, packed, packed.shape[0], x.shape[-1], per_byte, block)
    chk.same_device(fn, "packed", packed, "x", x)
    chk.tensor(fn, scale_name, scale)
    chk.same_device(fn, scale_name, scale, "x", x)
    if scale.numel() not in scale_sizes(packed.shape[0]):
        raise ValueError(f"{fn}: {scale_name} must have {' or '.join(map(str, scale_sizes(packed.shape[0])))} "
                         f"entries, got shape {tuple(scale.shape)}")
    if bias is not None:
        chk.tensor(fn, "bias", bias)
        chk.same_device(fn, "bias", bias, "x", x)
        if bias.shape != (packed.shape[0],):
            raise ValueError(f"{fn}: bias must have shape ({packed.shape[0]},), got {tuple(bias.shape)}")
        bias = bias.float().contiguous()
    # the kernels read packed rows as dense bytes
    if not (scale.dtype == torch.float32 and scale.dim() <= 1 and scale.is_contiguous()):
        scale = scale.float().contiguous().reshape(-1)
    return packed.contiguous(), scale, bias


def ternary_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   *, act_bits: Optional[int] = 8, in_features: Optional[int] = None) -> torch.Tensor:
    """``y = x @ (W_q * scale)^T + bias`` with ternary packed weights (see :func:`ternary_quantize`).

    x ``(..., K)`` fp32 / bf16 / fp16 -> y ``(..., N)`` in x's dtype. ``act_bits=8``: activations
    quantised to int8 per token (BitNet b1.58: ``127 / max|x|``), exact integer dot products, then
    ``y = acc / s * scale`` in fp32. ``act_bits=None``: float activations (W1.58A16).
    Differentiable in x (straight-through: ``dX = dY @ (W_q * scale)``) and bias.
    ``packed`` may be either format (:func:`ternary_quantize`): a 3-D tensor is tq1.6, which runs
    its own kernel for int8 activations on CPU and is converted to tq2 otherwise (CUDA tensors,
    ``act_bits=None``); the outputs are bitwise those of the tq2 weights.

    ``in_features``: the weight's K. The packed rows are padded to 128 weights, so without it an x
    whose last dim differs from K but rounds up to the same block is accepted; with it (as
    :class:`kernkit.nn.BitLinear` passes) every mismatch raises ``ValueError``."""
    fn = "ternary_linear"
    if act_bits not in (8, None):
        raise ValueError(f"{fn}: act_bits must be 8 or None, got {act_bits!r}")
    packed, scale, bias = _check_linear(fn, x, packed, scale, bias, 4, TERNARY_BLOCK, "scale", lambda n: (1, n),
                                        in_features)
    if packed.dim() == 3:  # tq1.6
        if act_bits == 8 and x.is_cpu and _native.simt_session is None:  # the CPU kernels, not CUDA or simt
            return call(_ternary16_op, x, packed, scale, bias)
        packed = _tq16_to_tq2(packed, x.shape[-1])
    return call(_ternary_op, x, packed, scale, bias, 8 if act_bits == 8 else 0)


def binary_linear(x: torch.Tensor, packed: torch.Tensor, alpha: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  *, binarize_input: bool = False, in_features: Optional[int] = None) -> torch.Tensor:
    """``y = alpha * (x @ sign(W)^T) + bias`` with 1-bit packed weights (see :func:`binary_quantize`).

    ``binarize_input=True``: activations become ``sign(x) * mean|x|`` per token and the dot product is
    XNOR + popcount (exact): ``y = mean|x| * alpha * (K - 2 popcount(x xor w))``. ``in_features``: the
    weight's K, checked exactly against x (rows are padded to 64 weights), as in :func:`ternary_linear`."""
    fn = "binary_linear"
    if not isinstance(binarize_input, bool):
        raise TypeError(f"{fn}: binarize_input must be a bool")
    packed, alpha, bias = _check_linear(fn, x, packed, alpha, bias, 8, BINARY_BLOCK, "alpha", lambda n: (n,),
                                        in_features)
    return call(_binary_op, x, packed, alpha, bias, binarize_input)


# --------------------------------------------------------------------------- training through the kernels

class _BitLinearFn(torch.autograd.Function):
    """Forward through the int8 ternary kernel; backward is BitNet's straight-through estimator:
    dX = dY @ (W_q * scale) and dW = dY^T @ dequant(x_q), as if both quantisers were the identity."""

    @staticmethod
    def forward(ctx, x, weight, bias, act_bits):
        packed, scale = _quantize_weight(weight)
        y = ternary_linear(x, packed, scale, bias, act_bits=act_bits)
        ctx.save_for_backward(x, packed, scale)  # packed W_q: 2 bits per weight
        ctx.act_bits, ctx.has_bias = act_bits, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, packed, scale = ctx.saved_tensors
        K = x.shape[-1]
        w = _dequant_op(packed, scale, K)
        x2 = x.reshape(-1, K)
        if ctx.act_bits == 8:
            x2 = _act_dequant_op(x2)
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = _matmul(dy2, w.to(dy.dtype)).reshape(x.shape).to(x.dtype)
        dw = _matmul(dy2.t(), x2.to(dy.dtype))
        dbias = dy2.sum(0) if ctx.has_bias else None
        return dx, dw, dbias, None

