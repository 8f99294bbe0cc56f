"""Fused attention: flash (softmax) and sigmoid attention with bottom-right
causal masks, sliding windows, attention sinks, softcap, GQA/MQA, variable-length
batches and KV-cache decode. CPU kernels for every ISA level; CUDA kernels (tensor cores for
bf16/fp16, an exact slower path for fp32), forward and backward.

Mask semantics (as flash-attn): with ``off = Sk - Sq``, query i sees key j iff
``i + off - left <= j <= i + off + right`` (a -1 bound is unbounded;
``causal=True`` sets right = 0) or ``j < sinks`` (still subject to the right
bound). Softmax rows with no visible key give 0 and lse = -inf.

All kernels are deterministic: outputs and gradients are bitwise identical
across runs and thread counts (reductions have a fixed order, no atomics), so
``deterministic=True`` costs nothing.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from . import _C, _native
from . import _checks as chk
from ._native import DTYPE_CODES, advise_large, dtype_code, launch_args, ptr, uses_cuda_kernels
from ._ops import _Parameter, _eager_plain, _plain_now, call, define_op

_ACTIVATIONS = {"softmax": 0, "sigmoid": 1}
MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------- op plumbing

def _strides(t: torch.Tensor):
    """(batch, row, head) element strides; varlen (total, H, D) tensors have batch stride 0."""
    st = t.stride()   # one call: stride(i) per dim costs as much as the whole tuple
    return st[:3] if len(st) == 4 else (0, st[0], st[1])


def _geometry(q, k, v, cu_q, max_q, max_k, shift=0):
    varlen = cu_q is not None
    B = cu_q.numel() - 1 if varlen else q.shape[0]
    Sq = max_q if varlen else q.shape[1]
    Sk = max_k if varlen else k.shape[1]
    Hq, D = q.shape[-2], q.shape[-1]
    Hkv, Dv = k.shape[-2], v.shape[-1]
    dims = [B, Hq, Hkv, D, Dv, Sq, Sk, shift]
    if varlen:
        lse_shape, stat = (Hq, q.shape[0]), (0, q.shape[0])
    else:
        lse_shape, stat = (B, Hq, Sq), (Hq * Sq, Sq)
    return dims, lse_shape, stat


def _mask_args(scale, softcap, left, right, sinks, activation, bias, bias_value, bias_default):
    return [scale, softcap, left, right, sinks, activation, ptr(bias), bias_value, bias_default]


def _fwd_impl(q, k, v, cu_q, cu_k, seqused_k, max_q, max_k, scale, softcap, left, right, sinks, activation,
              bias, bias_value, bias_default, shift):
    dims, lse_shape, stat = _geometry(q, k, v, cu_q, max_q, max_k, shift)
    out = advise_large(q.new_empty(q.shape[:-1] + (v.shape[-1],)))
    softmax = activation == 0
    lse = torch.empty(lse_shape if softmax else (0,), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or k.numel() == 0:   # no rows, or no keys: every row sees nothing
        out.zero_()
        lse.fill_(-math.inf)
        return out, lse
    _C.attention_fwd(ptr(q), _strides(q), ptr(k), _strides(k), ptr(v), _strides(v), ptr(out), _strides(out),
                     ptr(lse) if softmax else 0, stat, dims, ptr(cu_q), ptr(cu_k), ptr(seqused_k),
                     *_mask_args(scale, softcap, left, right, sinks, activation, bias, bias_value, bias_default),
                     dtype_code(q), *launch_args(q))
    return out, lse


def _fwd_fake(q, k, v, cu_q, cu_k, seqused_k, max_q, max_k, scale, softcap, left, right, sinks, activation,
              bias, bias_value, bias_default, shift):
    _, lse_shape, _ = _geometry(q, k, v, cu_q, max_q, max_k)
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    return out, q.new_empty(lse_shape if activation == 0 else (0,), dtype=torch.float32)


def _bwd_impl(dout, q, k, v, out, lse, cu_q, cu_k, seqused_k, max_q, max_k, scale, softcap, left, right, sinks,
              activation, bias, bias_value, bias_default, shift, need_dbias):
    dims, _, stat = _geometry(q, k, v, cu_q, max_q, max_k, shift)
    dout = dout.contiguous()
    dq = advise_large(torch.empty_like(q))
    # keys past cache_seqlens are not read by the forward: their gradients are zero (the kernels skip them)
    alloc = torch.empty_like if seqused_k is None else torch.zeros_like
    dk, dv = (advise_large(alloc(t)) for t in (k, v))
    dbias = torch.zeros((q.shape[-2],) if need_dbias else (0,), dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0 or dout.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dbias
    work = None   # CUDA: per-block partials of the bias gradient, summed in order by the kernels
    if need_dbias and uses_cuda_kernels(q):
        work = torch.zeros(_C.attention_bwd_work_floats(dims[0], dims[1], dims[5]), dtype=torch.float32,
                           device=q.device)
    delta = None
    if activation == 0:
        # rowsum(dO * O) in the lse layout: (B, Hq, Sq), or (Hq, total) for varlen
        delta = (dout.float() * out.float()).sum(-1)
        delta = (delta.transpose(1, 2) if q.dim() == 4 else delta.t()).contiguous()
    _C.attention_bwd(ptr(q), _strides(q), ptr(k), _strides(k), ptr(v), _strides(v), ptr(dout), _strides(dout),
                     ptr(dq), _strides(dq), ptr(dk), _strides(dk), ptr(dv), _strides(dv), ptr(lse), ptr(delta),
                     stat, dims, ptr(cu_q), ptr(cu_k), ptr(seqused_k),
                     *_mask_args(scale, softcap, left, right, sinks, activation, bias, bias_value, bias_default),
                     ptr(dbias) if need_dbias else 0, dtype_code(q), *launch_args(q), ptr(work))
    return dq, dk, dv, dbias


def _bwd_fake(dout, q, k, v, out, lse, cu_q, cu_k, seqused_k, max_q, max_k, scale, softcap, left, right, sinks,
              activation, bias, bias_value, bias_default, shift, need_dbias):
    dbias = q.new_empty((q.shape[-2],) if need_dbias else (0,), dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


_ARGS = ("Tensor? cu_q, Tensor? cu_k, Tensor? seqused_k, int max_q, int max_k, float scale, float softcap, "
         "int left, int right, int sinks, int activation, Tensor? bias, float bias_value, bool bias_default, "
         "int shift")

_attn_bwd = define_op(
    f"attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_ARGS}, bool need_dbias)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
    impl=_bwd_impl,
    fake=_bwd_fake,
)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, seqused_k = inputs[:6]
    bias = inputs[14]
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k, seqused_k, bias)
    ctx.args = inputs[6:14] + inputs[15:]


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, seqused_k, bias = ctx.saved_tensors
    (max_q, max_k, scale, softcap, left, right, sinks, activation, bias_value, bias_default, shift) = ctx.args
    need_dbias = bias is not None and ctx.needs_input_grad[14]
    dq, dk, dv, dbias = _attn_bwd(dout, q, k, v, out, lse, cu_q, cu_k, seqused_k, max_q, max_k, scale, softcap,
                                  left, right, sinks, activation, bias, bias_value, bias_default, shift,
                                  need_dbias)
    grads = [dq, dk, dv] + [None] * 15
    if need_dbias:
        grads[14] = dbias
    return tuple(grads)


_attn_fwd = define_op(
    f"attn_fwd(Tensor q, Tensor k, Tensor v, {_ARGS}) -> (Tensor, Tensor)",
    impl=_fwd_impl,
    fake=_fwd_fake,
    backward=_backward,
    setup_context=_setup_context,
)


# --------------------------------------------------------------------------- argument checks

def _check_qkv(fn, q, k, v, ndim):
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(fn, name, t)
        if t.dim() != ndim:
            layout = "(batch, seqlen, heads, head_dim)" if ndim == 4 else "(total_tokens, heads, head_dim)"
            raise ValueError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but q has {q.dtype}; all must match")
        chk.same_device(fn, name, t, "q", q)
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{fn}: k {tuple(k.shape)} and v {tuple(v.shape)} must agree in all but the last dim")
    if ndim == 4 and k.shape[0] != q.shape[0]:
        raise ValueError(f"{fn}: batch mismatch: q has {q.shape[0]}, k/v have {k.shape[0]}")
    if q.dtype == torch.float64 and uses_cuda_kernels(q):
        raise TypeError(f"{fn}: float64 attention runs on the CPU only (the CUDA kernels take fp32, bf16, fp16)")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hq == 0 or hkv == 0 or hq % hkv:
        raise ValueError(f"{fn}: q heads ({hq}) must be a positive multiple of k/v heads ({hkv}) (GQA/MQA)")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{fn}: q head dim {q.shape[-1]} != k head dim {k.shape[-1]}")
    for name, d in (("q/k", q.shape[-1]), ("v", v.shape[-1])):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"{fn}: {name} head dim must be in [1, {MAX_HEAD_DIM}], got {d}")


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _options(fn, q, causal, window, sinks, softcap, scale, activation, sigmoid_bias, return_lse, deterministic):
    if not isinstance(causal, bool):
        raise TypeError(f"{fn}: causal must be a bool, got {type(causal).__name__}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"{fn}: deterministic must be a bool")
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: window must be a pair (left, right), got {window!r}") from None
    left, right = chk.integral(fn, "window[0]", left), chk.integral(fn, "window[1]", right)
    for name, w in (("window[0]", left), ("window[1]", right)):
        if w < -1:
            raise ValueError(f"{fn}: {name} must be >= -1 (-1 = unbounded), got {w}")
    if causal:
        right = 0
    sinks = chk.integral(fn, "sinks", sinks)
    if sinks < 0:
        raise ValueError(f"{fn}: sinks must be >= 0, got {sinks}")
    softcap = chk.finite_float(fn, "softcap", softcap, min_value=0.0)
    scale = q.shape[-1] ** -0.5 if scale is None else chk.finite_float(fn, "scale", scale)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be 'softmax' or 'sigmoid', got {activation!r}")
    act = _ACTIVATIONS[activation]
    bias, bias_value, bias_default = None, 0.0, False
    if sigmoid_bias is not None and act != 1:
        raise ValueError(f"{fn}: sigmoid_bias is only used with activation='sigmoid'")
    if act == 1:
        if return_lse:
            raise ValueError(f"{fn}: return_lse is only defined for activation='softmax'")
        if sigmoid_bias is None:
            bias_default = True
        elif isinstance(sigmoid_bias, torch.Tensor):
            chk.tensor(fn, "sigmoid_bias", sigmoid_bias)
            chk.same_device(fn, "sigmoid_bias", sigmoid_bias, "q", q)
            if sigmoid_bias.shape != (q.shape[-2],):
                raise ValueError(f"{fn}: sigmoid_bias must be a float or a ({q.shape[-2]},) per-head tensor, "
                                 f"got shape {tuple(sigmoid_bias.shape)}")
            bias = sigmoid_bias.float().contiguous()
        else:
            bias_value = chk.finite_float(fn, "sigmoid_bias", sigmoid_bias)
    return [float(scale), softcap, left, right, sinks, act, bias, bias_value, bias_default]


# --------------------------------------------------------------------------- public API

def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               window: Sequence[int] = (-1, -1), sinks: int = 0, softcap: float = 0.0,
               scale: Optional[float] = None, activation: str = "softmax",
               sigmoid_bias: Union[None, float, torch.Tensor] = None, return_lse: bool = False,
               deterministic: bool = False):
    """Fused attention over ``(batch, seqlen, heads, head_dim)`` tensors.

    Args:
        q: ``(B, Sq, Hq, D)``; k: ``(B, Sk, Hkv, D)``; v: ``(B, Sk, Hkv, Dv)``, with ``Hq % Hkv == 0``
            (GQA/MQA) and head dims up to 256. fp32, bf16, fp16 (fp64 runs a slow exact path for gradcheck).
        causal: bottom-right aligned causal mask (sets the window's right bound to 0).
        window: ``(left, right)`` keys visible around the diagonal; -1 = unbounded.
        sinks: the first ``sinks`` keys are visible regardless of the left bound (StreamingLLM).
        softcap: if > 0, scores become ``softcap * tanh(score / softcap)``.
        scale: multiplies ``q @ k^T`` (default ``D ** -0.5``).
        activation: ``"softmax"`` or ``"sigmoid"`` (FlashSigmoid: ``out = sum_j sigmoid(s_ij + b) v_j``).
        sigmoid_bias: ``b``: a float or a per-head ``(Hq,)`` tensor (differentiable); default
            ``-log(number of keys)``.
        return_lse: also return the log-sum-exp ``(B, Hq, Sq)`` fp32 (softmax only).
        deterministic: accepted for flash-attn compatibility; kernkit is always deterministic.

    Returns ``out (B, Sq, Hq, Dv)`` in q's dtype, or ``(out, lse)``.

    Example::

        >>> q = torch.randn(1, 128, 8, 64); k = v = torch.randn(1, 128, 2, 64)
        >>> kernkit.flash_attn(q, k, v, causal=True, window=(32, -1), sinks=4).shape
        torch.Size([1, 128, 8, 64])
    """
    fn = "flash_attn"
    _check_qkv(fn, q, k, v, 4)
    opts = _options(fn, q, causal, window, sinks, softcap, scale, activation, sigmoid_bias, return_lse,
                    deterministic)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out, lse = call(_attn_fwd, q, k, v, None, None, None, q.shape[1], k.shape[1], *opts, 0)
    return (out, lse) if return_lse else out


def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, **kwargs):
    """Attention over packed variable-length sequences (flash-attn's varlen API).

    q ``(total_q, Hq, D)``, k/v ``(total_k, Hkv, D/Dv)``; ``cu_seqlens_q/k`` int32 or int64 ``(batch + 1,)``
    offsets (sequence b is rows ``cu[b]:cu[b+1]``; empty sequences allowed). Masks apply per
    sequence. Same keyword options as :func:`flash_attn`; lse is ``(Hq, total_q)``."""
    fn = "flash_attn_varlen"
    _check_qkv(fn, q, k, v, 3)
    cu_seqlens_q, longest_q = chk.cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, q.shape[0], with_longest=True)
    cu_seqlens_k, longest_k = chk.cu_seqlens(fn, "cu_seqlens_k", cu_seqlens_k, k.shape[0], with_longest=True)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"{fn}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1)")
    chk.same_device(fn, "cu_seqlens_q", cu_seqlens_q, "q", q)
    chk.same_device(fn, "cu_seqlens_k", cu_seqlens_k, "q", q)
    max_seqlen_q = chk.integral(fn, "max_seqlen_q", max_seqlen_q)
    max_seqlen_k = chk.integral(fn, "max_seqlen_k", max_seqlen_k)
    for name, m, longest in (("max_seqlen_q", max_seqlen_q, longest_q), ("max_seqlen_k", max_seqlen_k, longest_k)):
        if m < 0:
            raise ValueError(f"{fn}: {name} must be a non-negative int, got {m!r}")
        if longest is not None and m < longest:   # (the CUDA kernels size their grid by it)
            raise ValueError(f"{fn}: {name} ({m}) is smaller than the longest sequence ({longest})")
    return_lse = kwargs.get("return_lse", False)
    opts = _options(fn, q, **{**_DEFAULTS, **kwargs})
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out, lse = call(_attn_fwd, q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), None,
                    max_seqlen_q, max_seqlen_k, *opts, 0)
    return (out, lse) if return_lse else out


_DEFAULTS = dict(causal=False, window=(-1, -1), sinks=0, softcap=0.0, scale=None, activation="softmax",
                 sigmoid_bias=None, return_lse=False, deterministic=False)


_KV_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_KV_FAST_KWARGS = frozenset(("causal", "rotary_cos", "rotary_sin", "rotary_interleaved"))


def _rotary_tables(fn, q, kwargs):
    """Checked (cos, sin, interleaved) from flash_attn_with_kvcache's rotary arguments, or None."""
    cos, sin = kwargs.pop("rotary_cos", None), kwargs.pop("rotary_sin", None)
    inter = kwargs.pop("rotary_interleaved", True)
    if not isinstance(inter, bool):
        raise TypeError(f"{fn}: rotary_interleaved must be a bool, got {type(inter).__name__}")
    if cos is None and sin is None:
        return None
    if cos is None or sin is None:
        raise ValueError(f"{fn}: give both rotary_cos and rotary_sin, or neither")
    for name, t in (("rotary_cos", cos), ("rotary_sin", sin)):
        chk.tensor(fn, name, t)
        chk.same_device(fn, name, t, "q", q)
        if t.dim() != 2 or t.shape[0] == 0 or not 0 < 2 * t.shape[1] <= q.shape[-1]:
            raise ValueError(f"{fn}: {name} must be (positions, rotary_dim / 2) with 0 < rotary_dim <= head dim "
                             f"{q.shape[-1]}, got {tuple(t.shape)}")
    if sin.shape != cos.shape:
        raise ValueError(f"{fn}: rotary_sin {tuple(sin.shape)} must have rotary_cos's shape {tuple(cos.shape)}")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return cos.to(acc), sin.to(acc), inter


def _rotate(x, cos, sin, pos, interleaved):
    """x (B, S, H, D) rotated at positions pos (B, S): arithmetic in the tables' dtype (fp32; fp64 for
    fp64 x), one rounding to x's dtype (the native fast path computes the same products and sums)."""
    half = cos.shape[1]
    rd = 2 * half
    c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]
    xr = x[..., :rd].to(cos.dtype)
    x0, x1 = (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., :half], xr[..., half:])
    o0, o1 = x0 * c - x1 * s, x1 * c + x0 * s
    rot = torch.stack([o0, o1], -1).flatten(-2) if interleaved else torch.cat([o0, o1], -1)
    return torch.cat([rot.to(x.dtype), x[..., rd:]], -1)


def _kvcache_fast(q, k_cache, v_cache, cache_seqlens, k, v, kwargs):
    """The decode call's common case, checked with attribute reads only (at a small cache the
    generic checks cost several times the kernel): plain CPU tensors, no autograd or compile or
    modes, at most ``causal`` and the rotary tables given, few sequences, caches with room. Anything
    else (including every error) returns None and takes the fully checked path."""
    if kwargs and (not kwargs.keys() <= _KV_FAST_KWARGS or type(kwargs.get("causal", False)) is not bool
                   or type(kwargs.get("rotary_interleaved", False)) is not bool):
        return None
    if k is None:
        if v is not None:
            return None
        ts = (q, k_cache, v_cache)
    elif v is None:
        return None
    else:
        ts = (q, k_cache, v_cache, k, v)
    if type(q) is not torch.Tensor or not _plain_now():
        return None
    dt = q.dtype
    if dt not in _KV_FAST_DTYPES:
        return None
    grad = torch.is_grad_enabled()
    for t in ts:
        if (type(t) is not torch.Tensor and type(t) is not _Parameter) or not t.is_cpu or t.dtype is not dt \
                or (grad and t.requires_grad):
            return None
    qsh, ksh, vsh = q.shape, k_cache.shape, v_cache.shape
    if len(qsh) != 4 or len(ksh) != 4 or len(vsh) != 4:
        return None
    B, Sq, Hq, D = qsh
    _, cap, Hkv, Dk = ksh
    Dv = vsh[3]
    if not 0 < B <= 16 or Sq == 0 or ksh[0] != B or vsh[:3] != ksh[:3] or Dk != D \
            or not (0 < D <= MAX_HEAD_DIM and 0 < Dv <= MAX_HEAD_DIM) or Hkv == 0 or Hq == 0 or Hq % Hkv or cap == 0:
        return None
    n_new = 0
    if k is not None:
        n_new = k.shape[1] if k.dim() == 4 else -1
        if k.shape != (B, n_new, Hkv, D) or v.shape != (B, n_new, Hkv, Dv):
            return None
    if type(cache_seqlens) is int:
        if not 0 <= cache_seqlens <= cap - n_new:
            return None
        starts = (cache_seqlens,) * B
    else:
        if type(cache_seqlens) is not torch.Tensor or cache_seqlens.dtype is not torch.int32 \
                or not cache_seqlens.is_cpu or cache_seqlens.shape != (B,):
            return None
        starts = cache_seqlens.tolist()
        if min(starts) < 0 or max(starts) + n_new > cap:
            return None
    causal = kwargs.get("causal", False) if kwargs else False
    cos = sin = None
    rd = 0
    if kwargs and ("rotary_cos" in kwargs or "rotary_sin" in kwargs):
        cos, sin = kwargs.get("rotary_cos"), kwargs.get("rotary_sin")
        if type(cos) is not torch.Tensor or type(sin) is not torch.Tensor or cos.dtype is not torch.float32 \
                or sin.dtype is not torch.float32 or not (cos.is_cpu and sin.is_cpu) or cos.dim() != 2 \
                or cos.requires_grad or sin.requires_grad \
                or sin.shape != cos.shape or not 0 < 2 * cos.shape[1] <= D or not cos.is_contiguous() \
                or not sin.is_contiguous() or max(starts) + max(Sq if causal else 1, n_new) > cos.shape[0]:
            return None
        rd = 2 * cos.shape[1]
    # strides as they are (the native call takes all four and checks the last is 1)
    qs, kcs, vcs = q.stride(), k_cache.stride(), v_cache.stride()
    if qs[3] != 1 or kcs[3] != 1 or vcs[3] != 1:
        return None
    ks = vs = qs
    if n_new:
        ks, vs = k.stride(), v.stride()
        if ks[3] != 1 or vs[3] != 1:
            return None
    try:  # a functorch wrapper leaked out of its transform has no storage: the checked path takes it
        ptrs = (q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k.data_ptr() if n_new else 0,
                v.data_ptr() if n_new else 0)
    except RuntimeError:
        return None
    # a contiguous output as on the checked path (empty_like of a contiguous q costs half of torch.empty)
    out = torch.empty_like(q) if Dv == D and q.is_contiguous() else torch.empty((B, Sq, Hq, Dv), dtype=dt)
    # rotation, append, key counts and attention in one native call
    _C.kvcache_decode(ptrs[0], qs, ptrs[1], kcs, ptrs[2], vcs, ptrs[3], ks, ptrs[4], vs, out.data_ptr(), out.stride(),
                      starts, (Sq, Hq, Hkv, D, Dv, cap, n_new), causal, 0 if cos is None else cos.data_ptr(),
                      0 if sin is None else sin.data_ptr(), rd, kwargs.get("rotary_interleaved", True) if rd else True,
                      DTYPE_CODES[dt], torch.get_num_threads())
    return out


def flash_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            cache_seqlens: Union[int, torch.Tensor], k: Optional[torch.Tensor] = None,
                            v: Optional[torch.Tensor] = None, **kwargs):
    """Decode-time attention over a KV cache (flash-attn's ``flash_attn_with_kvcache``).

    q ``(B, Sq, Hq, D)``; caches ``(B, capacity, Hkv, D/Dv)``; ``cache_seqlens`` an int or int32
    ``(B,)``: keys already in the cache. If ``k``/``v`` ``(B, Snew, Hkv, ...)`` are given they are
    written **in place** into the caches at ``cache_seqlens``; attention then runs over the first
    ``cache_seqlens + Snew`` keys of each batch entry (masks aligned to that length).

    ``rotary_cos``, ``rotary_sin`` ``(positions, rotary_dim / 2)`` (flash-attn's arguments): q and the
    new keys are rotated before the append and the attention, the keys at positions
    ``cache_seqlens + i``, q at the same positions if ``causal`` or windowed (a bound below the cache
    capacity), else all at
    ``cache_seqlens``; features past ``rotary_dim`` pass through. ``rotary_interleaved`` (default True,
    as flash-attn): pairs ``(2i, 2i+1)`` rotate (GPT-J); False: ``(i, i + rotary_dim/2)`` (GPT-NeoX,
    rotate-half). Arithmetic in fp32, one rounding to q's dtype; inputs are not modified.

    On CUDA a tensor ``cache_seqlens`` is not range-checked on the host (that would synchronise
    every decode step): rows past the capacity (or the rotary tables) make the indexing assert on
    the device, and the kernels never read past the cache."""
    if _native.simt_session is None:
        fast = _kvcache_fast(q, k_cache, v_cache, cache_seqlens, k, v, kwargs)
        if fast is not None:
            return fast
    fn = "flash_attn_with_kvcache"
    _check_qkv(fn, q, k_cache, v_cache, 4)
    B, cap = k_cache.shape[0], k_cache.shape[1]
    if isinstance(cache_seqlens, bool) or not isinstance(cache_seqlens, (int, torch.Tensor)):
        raise TypeError(f"{fn}: cache_seqlens must be an int or an int32 tensor of shape ({B},)")
    given_int = cache_seqlens if isinstance(cache_seqlens, int) else None
    if given_int is not None:
        cache_seqlens = torch.full((B,), given_int, dtype=torch.int32, device=q.device)
    chk.tensor(fn, "cache_seqlens", cache_seqlens, dtypes=(torch.int32, torch.int64))
    if cache_seqlens.shape != (B,):
        raise ValueError(f"{fn}: cache_seqlens must have shape ({B},), got {tuple(cache_seqlens.shape)}")
    chk.same_device(fn, "cache_seqlens", cache_seqlens, "q", q)
    if (k is None) != (v is None):
        raise ValueError(f"{fn}: give both k and v to append, or neither")
    kwargs = dict(kwargs)
    rotary = _rotary_tables(fn, q, kwargs)
    opts = _options(fn, q, **{**_DEFAULTS, **kwargs})  # every option checked before the cache is written
    n_new = 0
    if k is not None:
        _check_qkv(fn, q, k, v, 4)
        if k.shape[2:] != k_cache.shape[2:] or v.shape[2:] != v_cache.shape[2:] or k.shape[0] != B:
            raise ValueError(f"{fn}: new k/v {tuple(k.shape)}/{tuple(v.shape)} do not match the caches "
                             f"{tuple(k_cache.shape)}/{tuple(v_cache.shape)}")
        n_new = k.shape[1]
    lens = cache_seqlens.to(torch.int64)
    # small CPU batches: plain Python ints (a decode token is a few microseconds of work)
    few = q.is_cpu and B <= 16
    starts = lens.tolist() if few else None
    # On a GPU the range check would synchronise every decode step: it is left to the device (the
    # append's indexing asserts on rows past the capacity, and the kernels never read past it).
    if (given_int is not None or q.device.type not in ("meta", "cuda")) and B > 0:
        lo, hi = (given_int, given_int) if given_int is not None else \
            (min(starts), max(starts)) if few else (int(lens.min()), int(lens.max()))
        if lo < 0 or hi + n_new > cap:
            raise ValueError(f"{fn}: cache_seqlens + new keys must lie in [0, {cap}] (the cache capacity); "
                             f"got cache_seqlens in [{lo}, {hi}] with {n_new} new keys")
    if rotary is not None:  # q and the new keys at positions cache_seqlens + i (q at cache_seqlens if not local)
        cos, sin, inter = rotary
        # flash-attn: a window bound past the cache capacity counts as unbounded (not local)
        causal_or_local = kwargs.get("causal", False) or any(0 <= w < cap for w in kwargs.get("window", (-1, -1)))
        span = max(q.shape[1] if causal_or_local else 1, n_new)
        # (a tensor cache_seqlens on a GPU is not read back, which would sync: indexing asserts there)
        if B and (given_int is not None or q.device.type not in ("meta", "cuda")):
            top = given_int if given_int is not None else (max(starts) if few else int(lens.max()))
            if top + span > cos.shape[0]:
                raise ValueError(f"{fn}: positions up to {top + span - 1} need rotary_cos/rotary_sin rows, which "
                                 f"have {cos.shape[0]}")
        steps = torch.arange(max(q.shape[1], n_new), device=q.device)
        if k is not None:
            k = _rotate(k, cos, sin, lens[:, None] + steps[:n_new], inter)
        qpos = lens[:, None] + (steps[: q.shape[1]] if causal_or_local else torch.zeros_like(steps[: q.shape[1]]))
        q = _rotate(q, cos, sin, qpos, inter)
    if n_new and few:   # slice copies beat an index_put per call
        for b, start in enumerate(starts):
            k_cache[b, start:start + n_new] = k[b]
            v_cache[b, start:start + n_new] = v[b]
    elif n_new:
        rows = lens[:, None] + torch.arange(n_new, device=q.device)
        batch = torch.arange(B, device=q.device)[:, None]
        k_cache[batch, rows] = k
        v_cache[batch, rows] = v
    seqused = (lens + n_new).to(torch.int32)
    return_lse = kwargs.get("return_lse", False)
    q, kc, vc = (_last_dim_contiguous(t) for t in (q, k_cache, v_cache))
    out, lse = call(_attn_fwd, q, kc, vc, None, None, seqused, q.shape[1], cap, *opts, 0)
    return (out, lse) if return_lse else out
