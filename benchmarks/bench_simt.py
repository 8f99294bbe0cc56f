"""simt: what running CUDA kernels in the emulator costs, so CUDA tests can be sized.

Each row times one emulated operation with the race checker on (the way the tests run) against
the same operation with it off (the baseline column; speedup < 1 is the checker's cost): a block
barrier, a warp shuffle, a warp mma m16n8k16, an ldmatrix.x4, one checked memory access, a
FlashAttention-2-like block per 64-key tile (4 warps, 256 mma), and whole ops (the CUDA kernel
under simt against kernkit's CPU kernel for the same call)."""

from __future__ import annotations

import time

import torch

import kernkit
from kernkit import testing

from .common import Row

FAMILY = "simt"


def _per_op(fn, n_ops: int, quick: bool) -> float:
    """Seconds per operation: best of a few timed calls of fn (which performs n_ops operations)."""
    fn()
    best = float("inf")
    for _ in range(2 if quick else 4):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n_ops


def _pair(fn, n_ops, quick):
    with testing.simt(racecheck=True):
        on = _per_op(fn, n_ops, quick)
    with testing.simt(racecheck=False):
        off = _per_op(fn, n_ops, quick)
    return on, off


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device != "cpu" or not testing.simt_available():
        return []
    from kernkit import _simt

    rows = []
    n = 200 if quick else 1000
    cases = [("__syncthreads", "128 threads", lambda: _simt.bench("barrier", n, 128), n, "barriers"),
             ("__syncthreads", "1024 threads", lambda: _simt.bench("barrier", n // 10, 1024), n // 10, "barriers"),
             ("__shfl_xor_sync", "1 warp", lambda: _simt.bench("shfl", n, 32), n, "warp shuffles"),
             ("mma m16n8k16 bf16", "1 warp", lambda: _simt.bench("mma", n, 32), n, "mma"),
             ("ldmatrix.x4", "1 warp", lambda: _simt.bench("ldmatrix", n, 32), n, "ldmatrix"),
             ("checked load+store", "256 threads", lambda: _simt.bench("memory", n, 256), n * 256, "accesses")]
    for case, shape, fn, ops, unit in cases:
        on, off = _pair(fn, ops, quick)
        rows.append(Row(FAMILY, case, shape, "-", on * 1e6, "racecheck off", off * 1e6,
                        f"{1 / on:,.0f} {unit}/s (racecheck on)"))

    g = torch.Generator().manual_seed(0)
    tiles = 2 if quick else 4
    q, k, v = (torch.randn(r, 64, generator=g).to(torch.bfloat16) for r in (64, 64 * tiles, 64 * tiles))
    o = torch.empty(64, 64)
    block = lambda: _simt.attention_block(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), tiles, 0.125)
    on, off = _pair(block, tiles, quick)
    rows.append(Row(FAMILY, "FlashAttention-like block", f"64 rows x {tiles} KV tiles, D64", "bfloat16", on * 1e6,
                    "racecheck off", off * 1e6, f"{256 / on:,.0f} mma/s in a block; {on * 1e3:.1f} ms per KV tile"))

    x = torch.randn(64, 1024, generator=g)
    w = torch.randn(1024, generator=g)
    a, b = torch.rand(2, 512, 64, generator=g), torch.randn(2, 512, 64, generator=g)
    xc, wc = torch.randn(2, 64, 512, generator=g), torch.randn(64, 4, generator=g)
    ops = [("rms_norm fwd", "64x1024", lambda: kernkit.rms_norm(x, w)),
           ("linear_scan", "2x512x64", lambda: kernkit.linear_scan(a, b)),
           ("causal_conv1d fwd", "2x64x512 W4", lambda: kernkit.causal_conv1d(xc, wc, activation="silu"))]
    for case, shape, fn in ops:
        with testing.simt():
            emu = _per_op(fn, 1, quick)
        cpu = _per_op(fn, 1, quick)
        rows.append(Row(FAMILY, case + " (CUDA kernel)", shape, "float32", emu * 1e6, "kernkit CPU kernel",
                        cpu * 1e6, f"emulated {emu / cpu:,.0f}x slower than the CPU kernel"))
    return rows
