"""Low-bit matmuls: ternary GEMV (hot: one weight copy in cache; cold: rotating
over >= 256 MiB of weight copies so every call reads from memory) and GEMM
against bf16 F.linear, binary XNOR GEMM against fp32 F.linear, and a BitLinear
training step against the usual fake-quantise + F.linear emulation."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import kernkit
from kernkit.nn import BitLinear
from kernkit.reference import bitlinear_emulated

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


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device != "cpu":
        return []  # CUDA low-bit kernels: a later step
    return _gemv_rows(quick) + _gemm_rows(quick) + _binary_rows(quick) + _float_act_rows(quick) + _sgemm_rows(quick) + _bitlinear_rows(quick)
