"""A busy machine: per-call times of kernkit ops and their torch equivalents, quiet and
with N busy-looping helper processes (N = the number of cores, so every thread of ours
competes for a core with another process, as with a data loader or a second model).

Each row reports the mean per-call time under load (what a decode loop feels: the mean,
not the median, carries the stalls), the ratio against the torch op under the same load,
and each op's slowdown against its own quiet time. The "always parallel" rows run the same
kernkit kernels with the busy-machine check off (kernkit before it: every region on
torch's OpenMP pool, whose end-of-region barrier waits out a whole time slice of another
process for a descheduled team thread).

The helpers stop on their own after a deadline even if this process dies."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import kernkit
from kernkit import _C
from kernkit.reference import linear_attn_step_ref

from .common import Row, dtype_name

FAMILY = "load"


def _busy_loop(deadline: float) -> None:
    while time.monotonic() < deadline:
        pass


@contextmanager
def busy_processes(n: int, max_seconds: float = 300.0):
    """n processes that spin until they are stopped (or max_seconds pass)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_busy_loop, args=(time.monotonic() + max_seconds,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.2)  # let the scheduler see them
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def _mean_per_call(fn, window: float) -> float:
    """Wall time over a window divided by the calls made in it (stalls included)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= window and calls >= 3:
            return elapsed / calls


def _measure(fns: dict, window: float, rounds: int) -> dict:
    """Median over rounds of each fn's mean per-call time, the fns interleaved."""
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _C.set_adaptive_threads(not k.startswith("always:"))
            try:
                out[k].append(_mean_per_call(fn, window))
            finally:
                _C.set_adaptive_threads(True)
    return {k: statistics.median(v) for k, v in out.items()}


def _cases(quick: bool):
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    cases = []

    x, w = r(64, 1024), r(1024)
    cases.append(("rms_norm", "64x1024", torch.float32, lambda: kernkit.rms_norm(x, w, 1e-6),
                  "F.rms_norm", lambda: F.rms_norm(x, (1024,), w, 1e-6)))

    bf = torch.bfloat16
    q, kc, vc = r(1, 1, 32, 128, dtype=bf), r(1, 1024, 8, 128, dtype=bf), r(1, 1024, 8, 128, dtype=bf)
    lens = torch.tensor([1024], dtype=torch.int32)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, kc, vc))
    cases.append(("decode attention", "Hq32 Hkv8 D128 cache 1024", bf,
                  lambda: kernkit.flash_attn_with_kvcache(q, kc, vc, lens),
                  "SDPA (enable_gqa)", lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)))

    ql, kl, vl, state = r(1, 8, 128), r(1, 8, 128), r(1, 8, 128), r(1, 8, 128, 128)
    gl = -torch.rand(1, 8, generator=g)
    cases.append(("linear_attn_step", "B1 H8 K128 V128", torch.float32,
                  lambda: kernkit.linear_attn_step(ql, kl, vl, state, gl),
                  "PyTorch step", lambda: linear_attn_step_ref(ql, kl, vl, state, gl)))

    N, K = 6912, 2560
    wt = r(N, K)
    packed, scale = kernkit.ternary_quantize(wt)
    xb, wb = r(1, K, dtype=torch.bfloat16), wt.to(torch.bfloat16)
    cases.append(("ternary GEMV", f"M1 K{K} N{N}", torch.bfloat16, lambda: kernkit.ternary_linear(xb, packed, scale),
                  "F.linear bf16", lambda: F.linear(xb, wb)))

    if not quick:
        D, Ns, L = 1536, 16, 256
        u, dt = r(1, D, L), torch.rand(1, D, L, generator=g) * 0.1
        A, Bm, Cm = -torch.rand(D, Ns, generator=g), r(1, Ns, L), r(1, Ns, L)

        def torch_scan():  # the same recurrence in plain PyTorch, one step per token
            h = torch.zeros(D, Ns)
            dA = torch.exp(dt[0].unsqueeze(-1) * A.unsqueeze(1))  # (D, L, N)
            dBu = (dt[0] * u[0]).unsqueeze(-1) * Bm[0].t().unsqueeze(0)
            ys = []
            for t in range(L):
                h = dA[:, t] * h + dBu[:, t]
                ys.append(h @ Cm[0, :, t])
            return torch.stack(ys, -1)

        cases.append(("selective_scan", f"B1 D{D} N{Ns} L{L}", torch.float32,
                      lambda: kernkit.selective_scan(u, dt, A, Bm, Cm), "PyTorch recurrence", torch_scan))

        qa = r(1, 2048, 8, 64, dtype=torch.bfloat16)
        qs = qa.transpose(1, 2)
        cases.append(("attention fwd causal", "S2048 H8 D64", torch.bfloat16,
                      lambda: kernkit.flash_attn(qa, qa, qa, causal=True),
                      "SDPA", lambda: F.scaled_dot_product_attention(qs, qs, qs, is_causal=True)))
    return cases


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device != "cpu":
        return []
    helpers = int(os.environ.get("KERNKIT_LOAD_PROCS", os.cpu_count() or 2))
    window, rounds = (0.2, 3) if quick else (0.4, 3)
    compare = not quick
    rows = []
    cases = _cases(quick)
    fns = {}
    for name, _, _, ours, _, theirs in cases:
        fns[f"ours:{name}"], fns[f"torch:{name}"] = ours, theirs
        if compare:
            fns[f"always:{name}"] = ours
    quiet = _measure(fns, window, rounds)
    with busy_processes(helpers):
        loaded = _measure(fns, window, rounds)
    for name, shape, dtype, _, torch_name, _ in cases:
        tq, tl = quiet[f"ours:{name}"], loaded[f"ours:{name}"]
        bq, bl = quiet[f"torch:{name}"], loaded[f"torch:{name}"]
        rate = f"quiet {tq * 1e6:.0f} us -> {tl / tq:.1f}x under load; {torch_name} {bq * 1e6:.0f} us -> {bl / bq:.1f}x"
        rows.append(Row(FAMILY, f"{name}, {helpers} busy", shape, dtype_name(dtype), tl * 1e6,
                        f"{torch_name} (same load)", bl * 1e6, rate,
                        {"quiet_us": tq * 1e6, "baseline_quiet_us": bq * 1e6, "helpers": helpers}))
        if compare:
            gq, gl = quiet[f"always:{name}"], loaded[f"always:{name}"]
            rows.append(Row(FAMILY, f"{name}, {helpers} busy, vs always parallel", shape, dtype_name(dtype),
                            tl * 1e6, f"kernkit always parallel ({kernkit.info()['thread_backend']})", gl * 1e6,
                            f"always parallel: quiet {gq * 1e6:.0f} us -> {gl / gq:.1f}x under load",
                            {"quiet_us": tq * 1e6, "baseline_quiet_us": gq * 1e6, "helpers": helpers}))
    return rows
