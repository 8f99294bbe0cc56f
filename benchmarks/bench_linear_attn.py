"""Chunked linear attention: kernkit.linear_attn against the chunked PyTorch form
(reference.linear_attn_chunk_ref, fla's `naive` chunk algorithm with batched matmuls)
and the token-by-token recurrence; the decode step against a PyTorch step; and the
sequence length where linear_attn overtakes kernkit's own causal flash_attn."""

from __future__ import annotations

import torch

import kernkit
from kernkit.reference import linear_attn_chunk_ref, linear_attn_recurrent_ref, linear_attn_step_ref

from .common import Row, bandwidth, dtype_name, flops_rate, time_pair

FAMILY = "linear_attn"


def _flops(T, H, K, V, C=64):
    # per token: intra (Q K^T and A V over a C-row chunk) + inter (Q S and the K^T V state update)
    return H * T * (2 * C * (K + V) + 4 * K * V)


def _inputs(B, T, H, K, V, dtype, gate, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=g).to(dtype) * 0.5 for d in (K, K, V))
    gg = None
    if gate == "scalar":
        gg = -torch.rand(B, T, H, generator=g) * 0.1
    elif gate == "vector":
        gg = -torch.rand(B, T, H, K, generator=g) * 0.1
    return q, k, v, gg


def _chunk_rows(quick):
    rows = []
    B, H, K, V = 1, 8, 128, 128
    T = 2048 if quick else 8192
    shape = f"B{B} T{T} H{H} K{K} V{V}"
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v, g = _inputs(B, T, H, K, V, dtype, "scalar")
        fl = _flops(T, H, K, V)
        tk, tb = time_pair(lambda: kernkit.linear_attn(q, k, v, g), lambda: linear_attn_chunk_ref(q, k, v, g),
                           quick=True)
        rows.append(Row(FAMILY, "simple GLA fwd", shape, dtype_name(dtype), tk * 1e6, "PyTorch chunked", tb * 1e6,
                        flops_rate(fl, tk, dtype)))
        leaves = [t.clone().requires_grad_() for t in (q, k, v, g)]
        do = torch.randn(B, T, H, V).to(dtype)

        def fb(fn):
            return lambda: torch.autograd.grad(fn(*leaves)[0], leaves, do)

        tk, tb = time_pair(fb(kernkit.linear_attn), fb(linear_attn_chunk_ref), quick=True)
        rows.append(Row(FAMILY, "simple GLA fwd+bwd", shape, dtype_name(dtype), tk * 1e6, "PyTorch chunked",
                        tb * 1e6, flops_rate(fl * 3.5, tk, dtype)))  # bwd ~ 10 GEMMs vs 4 (+ state recompute)
        qv, kv, vv, gv = _inputs(B, T, H, K, V, dtype, "vector")
        tk, tb = time_pair(lambda: kernkit.linear_attn(qv, kv, vv, gv),
                           lambda: linear_attn_chunk_ref(qv, kv, vv, gv), quick=True)
        rows.append(Row(FAMILY, "GLA (vector gate) fwd", shape, dtype_name(dtype), tk * 1e6, "PyTorch chunked",
                        tb * 1e6, flops_rate(fl, tk, dtype)))
    # Against the token loop (0.1 ms/token here): a shorter sequence keeps the run short.
    Tr = 512 if quick else 2048
    q, k, v, g = _inputs(B, Tr, H, K, V, torch.bfloat16, "scalar")
    tk, tb = time_pair(lambda: kernkit.linear_attn(q, k, v, g), lambda: linear_attn_recurrent_ref(q, k, v, g),
                       quick=True)
    rows.append(Row(FAMILY, "simple GLA fwd", f"B{B} T{Tr} H{H} K{K} V{V}", "bfloat16", tk * 1e6,
                    "PyTorch token loop", tb * 1e6, flops_rate(_flops(Tr, H, K, V), tk, torch.bfloat16)))
    return rows


def _crossover_rows(quick):
    """linear_attn vs kernkit.flash_attn(causal) at the same H and head dim, bf16 forward."""
    rows = []
    H, D = 8, 128
    lengths = (512, 1024, 2048) if quick else (256, 512, 1024, 2048, 4096)
    crossover = None
    for T in lengths:
        q, k, v, g = _inputs(1, T, H, D, D, torch.bfloat16, "scalar")
        tk, tb = time_pair(lambda: kernkit.linear_attn(q, k, v, g), lambda: kernkit.flash_attn(q, k, v, causal=True),
                           quick=True)
        if crossover is None and tk < tb:
            crossover = T
        rows.append(Row(FAMILY, "linear_attn vs causal flash_attn", f"B1 T{T} H{H} D{D}", "bfloat16", tk * 1e6,
                        "kernkit.flash_attn causal", tb * 1e6, ""))
    rows[-1].extra["crossover_T"] = crossover
    rows[-1].rate = f"faster from T={crossover}" if crossover else "not faster in range"
    return rows


def _step_rows(quick):
    rows = []
    H, K, V = 8, 128, 128
    for B in (1, 8):
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator().manual_seed(2)
            q, k = (torch.randn(B, H, K, generator=g).to(dtype) for _ in range(2))
            v = torch.randn(B, H, V, generator=g).to(dtype)
            state = torch.randn(B, H, K, V, generator=g)
            gg = -torch.rand(B, H, generator=g) * 0.1
            tk, tb = time_pair(lambda: kernkit.linear_attn_step(q, k, v, state, gg),
                               lambda: linear_attn_step_ref(q, k, v, state, gg), quick=True)
            nbytes = 2 * state.numel() * 4  # read the state, write the new one
            rows.append(Row(FAMILY, "decode step", f"B{B} H{H} K{K} V{V}", dtype_name(dtype), tk * 1e6,
                            "PyTorch step", tb * 1e6, bandwidth(nbytes, tk)))
            # In place (a decode cache): against PyTorch's in-place form of the same step.
            s1, s2 = state.clone(), state.clone()

            def torch_inplace():
                s2.mul_(gg.exp()[..., None, None]).add_(k.float()[..., None] * v.float()[..., None, :])
                return (K ** -0.5) * torch.einsum("bhk,bhkv->bhv", q.float(), s2).to(dtype)

            tk, tb = time_pair(lambda: kernkit.linear_attn_step(q, k, v, s1, gg, inplace=True), torch_inplace,
                               quick=True)
            rows.append(Row(FAMILY, "decode step in place", f"B{B} H{H} K{K} V{V}", dtype_name(dtype), tk * 1e6,
                            "PyTorch step in place", tb * 1e6, bandwidth(nbytes, tk)))
    return rows


def _fla(gate):
    """flash-linear-attention's Triton kernel for a gate form, when fla is installed next to kernkit."""
    try:
        if gate == "vector":
            from fla.ops.gla import chunk_gla as fn
            name = "fla chunk_gla"
        else:
            from fla.ops.simple_gla import chunk_simple_gla as fn
            name = "fla chunk_simple_gla"
        return (lambda q, k, v, g: fn(q, k, v, g)), name
    except Exception:
        return linear_attn_chunk_ref, "PyTorch chunked"


def _cuda_rows(quick, dev="cuda"):
    """On the GPU: simple GLA (scalar gate) and GLA (vector gate), forward and forward+backward,
    against fla's Triton kernels when importable (else the chunked PyTorch form); the fp32 path;
    the decode step."""
    rows = []
    B, T, H, K, V = (1, 2048, 16, 128, 128) if quick else (2, 8192, 16, 128, 128)
    shape = f"B{B} T{T} H{H} K{K} V{V}"
    fl = B * _flops(T, H, K, V)
    for gate, what in (("scalar", "simple GLA"), ("vector", "GLA (vector gate)")):
        theirs, name = _fla(gate)
        for dtype in ((torch.bfloat16, torch.float32) if gate == "scalar" else (torch.bfloat16,)):
            q, k, v, g = (None if t is None else t.to(dev) for t in _inputs(B, T, H, K, V, dtype, gate))
            tk, tb = time_pair(lambda: kernkit.linear_attn(q, k, v, g), lambda: theirs(q, k, v, g), device=dev,
                               quick=True)
            rows.append(Row(FAMILY, f"{what} fwd", shape, dtype_name(dtype), tk * 1e6, name, tb * 1e6,
                            flops_rate(fl, tk, dtype, dev)))
            leaves = [t.clone().requires_grad_() for t in (q, k, v, g)]
            do = torch.randn(B, T, H, V, device=dev).to(dtype)

            def fb(fn):
                return lambda: torch.autograd.grad(fn(*leaves)[0], leaves, do)

            tk, tb = time_pair(fb(kernkit.linear_attn), fb(theirs), device=dev, quick=True)
            rows.append(Row(FAMILY, f"{what} fwd+bwd", shape, dtype_name(dtype), tk * 1e6, name, tb * 1e6,
                            f"{flops_rate(fl * 3.5, tk, dtype, dev)}, deterministic (kernkit)"))
    Bd = 8
    q, k = (torch.randn(Bd, H, K, device=dev, dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(Bd, H, V, device=dev, dtype=torch.bfloat16)
    state = torch.randn(Bd, H, K, V, device=dev)
    gg = -torch.rand(Bd, H, device=dev) * 0.1
    tk, tb = time_pair(lambda: kernkit.linear_attn_step(q, k, v, state, gg, inplace=True),
                       lambda: linear_attn_step_ref(q, k, v, state, gg), device=dev, quick=quick)
    rows.append(Row(FAMILY, "decode step in place", f"B{Bd} H{H} K{K} V{V}", "bfloat16", tk * 1e6, "PyTorch step",
                    tb * 1e6, bandwidth(2 * state.numel() * 4, tk, dev)))
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device == "cuda":
        with torch.inference_mode(False):
            return _cuda_rows(quick)
    with torch.inference_mode(False):
        return _chunk_rows(quick) + _crossover_rows(quick) + _step_rows(quick)
