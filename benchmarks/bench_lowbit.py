"""Low-bit matmuls: ternary GEMV (hot: one weight copy in cache; cold: rotating
over >= 256 MiB of weight copies so every call reads from memory) and GEMM
against bf16 F.linear, binary XNOR GEMM against fp32 F.linear, and a BitLinear
training step against the usual fake-quantise + F.linear emulation."""

from __future__ import annotations

import ctypes
import statistics
import time
import itertools
import os

import torch
import torch.nn.functional as F

import kernkit
from kernkit.nn import BitLinear
from kernkit.reference import bitlinear_emulated

from kernkit import _C
from kernkit._native import dtype_code, launch_args, ptr

from .common import Row, bandwidth, flops_rate, mem_read_gbps, time_pair

FAMILY = "lowbit"


def _cycler(items):
    it = itertools.cycle(items)
    return lambda: next(it)


def _gemv_rows(quick):
    rows = []
    shapes = [(2560, 6912)] if quick else [(2560, 6912), (6912, 2560), (2560, 2560)]
    g = torch.Generator().manual_seed(0)
    for K, N in shapes:
        w = torch.randn(N, K, generator=g)
        packed, scale = kernkit.ternary_quantize(w)
        x = torch.randn(1, K, generator=g).to(torch.bfloat16)
        wb = w.to(torch.bfloat16)
        tk, tb = time_pair(lambda: kernkit.ternary_linear(x, packed, scale), lambda: F.linear(x, wb), quick=quick)
        rows.append(Row(FAMILY, "ternary GEMV hot", f"M1 K{K} N{N}", "bfloat16", tk * 1e6, "F.linear bf16 (hot)",
                        tb * 1e6, bandwidth(packed.numel(), tk) + " of weights"))
        if quick:
            continue
        copies_t = max(2, (256 << 20) // packed.numel() + 1)
        copies_b = max(2, (256 << 20) // wb.numel() // 2 + 1)
        pk = _cycler([packed.clone() for _ in range(copies_t)])
        wbs = _cycler([wb.clone() for _ in range(copies_b)])
        tk, tb = time_pair(lambda: kernkit.ternary_linear(x, pk(), scale), lambda: F.linear(x, wbs()), quick=True)
        gbps, read = packed.numel() / tk / 1e9, mem_read_gbps()
        rows.append(Row(FAMILY, "ternary GEMV cold", f"M1 K{K} N{N}", "bfloat16", tk * 1e6, "F.linear bf16 (cold)",
                        tb * 1e6, f"{gbps:.1f} GB/s of weights ({100 * gbps / read:.0f}% of {read:.0f} read)"))
        # 1.6-bit weights: 20% fewer bytes from memory than the 2-bit format, the same outputs
        p16, _ = kernkit.ternary_quantize(w, format="tq1.6")
        pk16 = _cycler([p16.clone() for _ in range(max(2, (256 << 20) // p16.numel() + 1))])
        t16, t2 = time_pair(lambda: kernkit.ternary_linear(x, pk16(), scale), lambda: kernkit.ternary_linear(x, pk(), scale),
                            quick=True)
        g16 = p16.numel() / t16 / 1e9
        rows.append(Row(FAMILY, "tq1.6 GEMV cold", f"M1 K{K} N{N}", "bfloat16", t16 * 1e6, "kernkit tq2 (cold)",
                        t2 * 1e6, f"{g16:.1f} GB/s of weights ({100 * g16 / read:.0f}% of {read:.0f} read); "
                        f"{N * K / t16 / 1e9:.0f} vs {N * K / t2 / 1e9:.0f} G weights/s"))
    return rows


def _gemm_rows(quick):
    rows = []
    K, N = 2560, 6912
    g = torch.Generator().manual_seed(1)
    w = torch.randn(N, K, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    wb = w.to(torch.bfloat16)
    for M in ([128] if quick else [128, 256, 512]):
        x = torch.randn(M, K, generator=g).to(torch.bfloat16)
        tk, tb = time_pair(lambda: kernkit.ternary_linear(x, packed, scale), lambda: F.linear(x, wb), quick=quick)
        rows.append(Row(FAMILY, "ternary GEMM int8", f"M{M} K{K} N{N}", "bfloat16", tk * 1e6, "F.linear bf16",
                        tb * 1e6, flops_rate(2 * M * K * N, tk, torch.bfloat16).replace("GFLOP", "GOP")))
    return rows


def _float_act_rows(quick):
    # float activations (no activation quantisation): W1.58A32 and W1A32, against fp32 F.linear on the
    # dequantised weights
    K, N = 2560, 6912
    g = torch.Generator().manual_seed(5)
    w = torch.randn(N, K, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    pb, alpha = kernkit.binary_quantize(w)
    wt = kernkit.ternary_unpack(packed, (N, K)).float() * scale
    wb = kernkit.binary_unpack(pb, (N, K)).float() * alpha[:, None]
    rows = []
    for M in ([1] if quick else [1, 512]):
        x = torch.randn(M, K, generator=g)
        for case, fn, dense in (("ternary W1.58A32", lambda: kernkit.ternary_linear(x, packed, scale, act_bits=None),
                                 wt),
                                ("binary W1A32", lambda: kernkit.binary_linear(x, pb, alpha), wb)):
            tk, tb = time_pair(fn, lambda: F.linear(x, dense), quick=quick)
            rows.append(Row(FAMILY, case, f"M{M} K{K} N{N}", "float32", tk * 1e6, "F.linear fp32", tb * 1e6,
                            f"{2 * M * K * N / tk / 1e9:.0f} GFLOP/s"))
    return rows


def _binary_rows(quick):
    M, K, N = 64, 4096, 4096
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g)
    packed, alpha = kernkit.binary_quantize(w)
    tk, tb = time_pair(lambda: kernkit.binary_linear(x, packed, alpha, binarize_input=True), lambda: F.linear(x, w),
                       quick=quick)
    return [Row(FAMILY, "binary XNOR GEMM", f"M{M} K{K} N{N}", "float32", tk * 1e6, "F.linear fp32", tb * 1e6,
                f"{2 * M * K * N / tk / 1e9:.0f} binary GOP/s")]


FP32_FMA_PEAK = 470.0  # GFLOP/s, two cores (benchmarks/common.py)


def _sgemm_rows(quick):
    # the fp32 GEMM of BitLinear's straight-through backward: dX = dY @ W (plain) and dW = dY^T @ X
    # (transposed A), against torch.mm on the same operands
    from kernkit.lowbit import _mm_op

    M, K, N = (256, 1024, 1024) if quick else (512, 2048, 2048)
    g = torch.Generator().manual_seed(4)
    dy, w, x = torch.randn(M, N, generator=g), torch.randn(N, K, generator=g), torch.randn(M, K, generator=g)
    rows = []
    for case, a, b in (("fp32 GEMM dY @ W", dy, w), ("fp32 GEMM dY^T @ X", dy.t(), x)):
        tk, tb = time_pair(lambda: _mm_op(a, b), lambda: a @ b, quick=quick)
        gf = 2 * a.shape[0] * a.shape[1] * b.shape[1] / tk / 1e9
        rows.append(Row(FAMILY, case, f"M{a.shape[0]} K{a.shape[1]} N{b.shape[1]}", "float32", tk * 1e6, "torch.mm",
                        tb * 1e6, f"{gf:.0f} GFLOP/s ({100 * gf / FP32_FMA_PEAK:.0f}% of FMA peak)"))
    return rows


def _bitlinear_rows(quick):
    M, K, N = (256, 1024, 1024) if quick else (512, 2048, 2048)
    g = torch.Generator().manual_seed(3)
    layer = BitLinear(K, N)
    x = torch.randn(M, K, generator=g, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    dy = torch.randn(M, N, generator=g)

    def ours():
        layer.zero_grad(set_to_none=True)
        layer(x).backward(dy)

    def emulated():
        bitlinear_emulated(x, w, b).backward(dy)

    tk, tb = time_pair(ours, emulated, quick=quick)
    return [Row(FAMILY, "BitLinear train step", f"M{M} K{K} N{N}", "float32", tk * 1e6,
                "fake-quant + F.linear", tb * 1e6, "fwd + bwd")]


def _device_copy_gbps(dev) -> float:
    """Device memory bandwidth measured in this run: a 1 GiB copy (read + write)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t, _ = time_pair(lambda: dst.copy_(src), lambda: None, device=dev, quick=True)
    return 2 * src.numel() / t / 1e9


def _cuda_rows(quick, dev="cuda"):
    """BitNet-2B shapes on the GPU: GEMV (weights cold: rotating over >= 256 MiB of copies, beyond
    L2) against cuBLAS bf16 F.linear; int8 GEMM for prefill against bf16 F.linear and torch._int_mm;
    binary XNOR against bf16 F.linear; a BitLinear training step against the emulation."""
    rows = []
    hbm = _device_copy_gbps(dev)
    g = torch.Generator().manual_seed(0)
    for K, N in ([(2560, 6912)] if quick else [(2560, 6912), (6912, 2560)]):
        w = torch.randn(N, K, generator=g)
        packed, scale = kernkit.ternary_quantize(w.to(dev))
        wb = w.to(torch.bfloat16).to(dev)
        x = torch.randn(1, K, generator=g).to(torch.bfloat16).to(dev)
        pk = _cycler([packed.clone() for _ in range(max(2, (256 << 20) // packed.numel() + 1))])
        wbs = _cycler([wb.clone() for _ in range(max(2, (256 << 20) // (2 * wb.numel()) + 1))])
        tk, tb = time_pair(lambda: kernkit.ternary_linear(x, pk(), scale), lambda: F.linear(x, wbs()), device=dev,
                           quick=quick)
        gbps = packed.numel() / tk / 1e9
        rows.append(Row(FAMILY, "ternary GEMV cold", f"M1 K{K} N{N}", "bfloat16", tk * 1e6, "F.linear bf16 (cold)",
                        tb * 1e6, f"{gbps:.0f} GB/s of weights ({100 * gbps / hbm:.0f}% of copy {hbm:.0f})"))
        for M in ([128] if quick else [16, 128, 512]):
            xm = torch.randn(M, K, generator=g).to(torch.bfloat16).to(dev)
            tk, tb = time_pair(lambda: kernkit.ternary_linear(xm, packed, scale), lambda: F.linear(xm, wb),
                               device=dev, quick=quick)
            rows.append(Row(FAMILY, "ternary GEMM int8", f"M{M} K{K} N{N}", "bfloat16", tk * 1e6, "F.linear bf16",
                            tb * 1e6, f"{2 * M * K * N / tk / 1e12:.1f} TOP/s"))
            if M >= 32 and hasattr(torch, "_int_mm"):
                xi = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev)
                wi = torch.randint(-1, 2, (K, N), dtype=torch.int8, device=dev)
                tk, tb = time_pair(lambda: kernkit.ternary_linear(xm, packed, scale), lambda: torch._int_mm(xi, wi),
                                   device=dev, quick=quick)
                rows.append(Row(FAMILY, "ternary GEMM int8", f"M{M} K{K} N{N}", "bfloat16", tk * 1e6,
                                "torch._int_mm int8", tb * 1e6, "quantise + GEMM + rescale vs the bare int8 GEMM"))
    M, K, N = 64, 4096, 4096
    w, x = torch.randn(N, K, generator=g).to(dev), torch.randn(M, K, generator=g).to(dev)
    pb, alpha = kernkit.binary_quantize(w)
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    tk, tb = time_pair(lambda: kernkit.binary_linear(x, pb, alpha, binarize_input=True), lambda: F.linear(xb, wb),
                       device=dev, quick=quick)
    rows.append(Row(FAMILY, "binary XNOR GEMM", f"M{M} K{K} N{N}", "float32", tk * 1e6, "F.linear bf16", tb * 1e6,
                    f"{2 * M * K * N / tk / 1e12:.1f} binary TOP/s"))
    M, K, N = 512, 2048, 2048
    layer = BitLinear(K, N).to(dev)
    xt = torch.randn(M, K, generator=g).to(dev).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    dy = torch.randn(M, N, generator=g).to(dev)

    def ours():
        layer.zero_grad(set_to_none=True)
        layer(xt).backward(dy)

    tk, tb = time_pair(ours, lambda: bitlinear_emulated(xt, w, b).backward(dy), device=dev, quick=quick)
    rows.append(Row(FAMILY, "BitLinear train step", f"M{M} K{K} N{N}", "float32", tk * 1e6, "fake-quant + F.linear",
                    tb * 1e6, "fwd + bwd"))
    return rows


# --------------------------------------------------------------------------- side by side with bitnet.cpp's I2_S

def _i2s_lib():
    """bitnet.cpp's I2_S GEMV built as a shared library outside this repository (its code is not
    ours to ship): KERNKIT_I2S_LIB=/path/libi2s.so, with this C ABI:
      int  i2s_packed_bytes(int64 N, int64 K)
      void i2s_pack(const float* w, int64 N, int64 K, uint8* packed)       absmean ternary + quantize_i2_s
      void i2s_quant_act_sum(const float* x, int64 K, int8* xq, float* scale, int32* sum)   quantize_row_i8_s
      void i2s_gemv_s(const uint8* packed, const int8* xq, float scale, int32 sum, int64 N, int64 K,
                      float* y, int nthreads)                               rows split over a thread pool
    Without the variable these rows are skipped."""
    path = os.environ.get("KERNKIT_I2S_LIB")
    if not path:
        return None
    lib = ctypes.CDLL(path)
    P, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.i2s_packed_bytes.argtypes, lib.i2s_packed_bytes.restype = [i64, i64], ctypes.c_int
    lib.i2s_pack.argtypes, lib.i2s_pack.restype = [P, i64, i64, P], None
    lib.i2s_quant_act_sum.argtypes, lib.i2s_quant_act_sum.restype = [P, i64, P, P, P], None
    lib.i2s_gemv_s.argtypes = [P, P, ctypes.c_float, ctypes.c_int32, i64, i64, P, ctypes.c_int]
    lib.i2s_gemv_s.restype = None
    return lib


def _time_phases(fa, fb, rounds, phase_s=0.25):
    """Median seconds per call of fa and fb, each timed in its own phase of back-to-back calls (as a
    decode loop runs one library), phases alternating. Batches alternating every few calls, as
    time_pair runs them, left bitnet.cpp's pool waking beside torch's and timed I2_S at 2-3x its
    standalone time; here both sides run as they do alone."""
    out = ([], [])
    for _ in range(rounds):
        for f, ts in zip((fa, fb), out):
            time.sleep(0.1)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.05:  # warm-up: pool awake, copies cycled
                f()
            n, t0 = 0, time.perf_counter()
            while (t := time.perf_counter() - t0) < phase_s:
                f()
                n += 1
            ts.append(t / n)
    return statistics.median(out[0]), statistics.median(out[1])


def _i2s_rows(quick):
    lib = _i2s_lib()
    if lib is None:
        return []
    rows = []
    threads = torch.get_num_threads()
    read = mem_read_gbps()
    g = torch.Generator().manual_seed(3)
    for N, K in [(6912, 2560)] if quick else [(6912, 2560), (2560, 6912), (2560, 2560)]:
        w = torch.randn(N, K, generator=g)
        x = torch.randn(1, K, generator=g)
        packed, scale = kernkit.ternary_quantize(w)
        y = torch.empty(1, N)
        nthr, dev, stream = launch_args(x)
        Kp = packed.shape[1] * 4

        def ours(pk):  # the kernel call itself (the public function adds ~20-40 us of Python checks)
            _C.ternary_linear(ptr(x), x.stride(0), ptr(pk), ptr(scale), False, 0, ptr(y), 1, N, K, Kp, 8,
                              dtype_code(x), nthr, dev, stream, 0)

        p16, _ = kernkit.ternary_quantize(w, format="tq1.6")

        def ours16(pk):
            _C.ternary16_linear(ptr(x), x.stride(0), ptr(pk), ptr(scale), False, 0, ptr(y), 1, N, K,
                                p16.shape[1] * 320, dtype_code(x), nthr)

        ipk = torch.empty(lib.i2s_packed_bytes(N, K), dtype=torch.uint8)
        lib.i2s_pack(ptr(w), N, K, ptr(ipk))
        xq, yi = torch.empty(K, dtype=torch.int8), torch.empty(N)
        a_s, a_sum = ctypes.c_float(), ctypes.c_int32()

        def theirs(pk):  # what bitnet.cpp's mul_mat does per token: quantise the activations, then the GEMV
            lib.i2s_quant_act_sum(ptr(x), K, ptr(xq), ctypes.byref(a_s), ctypes.byref(a_sum))
            lib.i2s_gemv_s(ptr(pk), ptr(xq), a_s.value, a_sum.value, N, K, ptr(yi), threads)

        ours(packed)
        theirs(ipk)
        err = ((y[0] - yi).abs().max() / yi.abs().max()).item()  # same math: both exact integer dots
        y2 = y.clone()
        ours16(p16)
        assert torch.equal(y, y2), "tq1.6 and tq2 outputs differ"
        ck = _cycler([packed.clone() for _ in range((256 << 20) // packed.numel() + 1)])
        c16 = _cycler([p16.clone() for _ in range((256 << 20) // p16.numel() + 1)])
        ci = _cycler([ipk.clone() for _ in range((256 << 20) // ipk.numel() + 1)])
        shape = f"M1 K{K} N{N}"
        for case, fmt, nbytes, fa, fb in (
                ("hot", "tq2", packed.numel(), lambda: ours(packed), lambda: theirs(ipk)),
                ("cold", "tq2", packed.numel(), lambda: ours(ck()), lambda: theirs(ci())),
                ("hot", "tq1.6", p16.numel(), lambda: ours16(p16), lambda: theirs(ipk)),
                ("cold", "tq1.6", p16.numel(), lambda: ours16(c16()), lambda: theirs(ci()))):
            tk, ti = _time_phases(fa, fb, rounds=3 if quick else 5)
            gk, gi = nbytes / tk / 1e9, packed.numel() / ti / 1e9
            rows.append(Row(FAMILY, f"{fmt} GEMV vs I2_S {case}", shape, "float32", tk * 1e6,
                            f"bitnet.cpp I2_S ({case})", ti * 1e6,
                            f"{gk:.1f} vs {gi:.1f} GB/s ({100 * gk / read:.0f}% / {100 * gi / read:.0f}% of read "
                            f"{read:.0f}); max rel diff {err:.0e}"))
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device == "cuda":
        return _cuda_rows(quick)
    return _gemv_rows(quick) + _i2s_rows(quick) + _gemm_rows(quick) + _binary_rows(quick) + _float_act_rows(quick) + _sgemm_rows(quick) + _bitlinear_rows(quick)
