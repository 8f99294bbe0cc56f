"""Timing and reporting shared by the benchmark families.

Kernel and baseline are timed alternately in the same run (this machine is
shared and noisy), each as the median of several batches; the table reports
the baseline/kernkit time ratio (>1: kernkit is faster) and the achieved rate
next to the machine's roofline."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

# Reference rates of the 2-core development machine (developers' guide): a plain
# GEMM through torch runs ~160 GFLOP/s in fp32 and ~410-575 in bf16; memory
# streams ~30-48 GB/s. (The fp32 FMA peak of the two cores is ~470 GFLOP/s: 7.3 G
# vfmadd231ps zmm per second per core; torch's MKL sgemm takes its AVX2 path on AMD.)


_MEASURED: dict = {}


def _best(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def mem_copy_gbps() -> float:
    """Memory bandwidth of torch's own copy (read + write) over 256 MiB, measured once per run:
    the machine is shared and its bandwidth varies between runs (30-70 GB/s seen)."""
    if "copy" not in _MEASURED:
        src = torch.ones(64 << 20)
        dst = torch.empty_like(src).fill_(0)
        _MEASURED["copy"] = 2 * src.numel() * 4 / _best(lambda: dst.copy_(src)) / 1e9
    return _MEASURED["copy"]


def mem_read_gbps() -> float:
    """Read-only bandwidth (torch.sum over 256 MiB), measured once per run."""
    if "read" not in _MEASURED:
        src = torch.ones(64 << 20)
        _MEASURED["read"] = src.numel() * 4 / _best(lambda: src.sum()) / 1e9
    return _MEASURED["read"]
CPU_GFLOPS = {torch.float32: 160.0, torch.bfloat16: 500.0, torch.float16: 500.0}


@dataclass
class Row:
    family: str
    case: str
    shape: str
    dtype: str
    kernkit_us: float
    baseline: str
    baseline_us: float
    rate: str = ""            # e.g. "31.2 GB/s (78% of 40)"
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.baseline_us / self.kernkit_us if self.kernkit_us > 0 else float("nan")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _batch_time(fn: Callable, n: int, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / n


def time_pair(fn_a: Callable, fn_b: Callable, *, device: str = "cpu", quick: bool = False,
              rounds: Optional[int] = None, gap_s: float = 0.0) -> tuple[float, float]:
    """Median seconds per call of fn_a and fn_b, measured in alternating batches. ``gap_s``: a pause
    before each batch, for libraries whose worker threads keep spinning for a while after a call
    (they would otherwise take a core from the other side's batch); each such batch is preceded by
    untimed calls, so neither side is timed waking its sleeping workers."""
    for f in (fn_a, fn_b):
        f()
        f()
    per_batch = 0.02 if quick else 0.05
    est = max(_batch_time(fn_a, 1, device), _batch_time(fn_b, 1, device), 1e-7)
    n = max(1, int(per_batch / est))
    ta, tb = [], []
    for _ in range(rounds or (5 if quick else 9)):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            if gap_s:
                time.sleep(gap_s)
                _batch_time(fn, max(3, n // 4), device)  # untimed: wake the pool, refill the caches
            out.append(_batch_time(fn, n, device))
    return statistics.median(ta), statistics.median(tb)


def bandwidth(nbytes: float, seconds: float, device: str = "cpu") -> str:
    gbps = nbytes / seconds / 1e9
    if device == "cpu":
        ref = mem_copy_gbps()
        return f"{gbps:.1f} GB/s ({100 * gbps / ref:.0f}% of copy {ref:.0f})"
    return f"{gbps:.0f} GB/s"


def gemm_gflops(dtype: torch.dtype) -> tuple[float, str]:
    """torch.mm's rate at 2048^3 in this run (fp32, or bf16 for the 16-bit types: torch's fp16 CPU
    GEMM has no fast path), measured once per run: the roofline the attention rows are held to.
    Returns (GFLOP/s, the dtype measured). Without a native bf16 GEMM (AVX2 hosts) torch's bf16 mm
    runs at a few GFLOP/s at most, which says nothing about the machine: there the fp32 rate is the
    roofline (a 512^3 probe decides, so the slow path is never timed at 2048^3)."""
    dt = torch.float32 if dtype == torch.float32 else torch.bfloat16
    if dt == torch.bfloat16 and _gemm_rate(torch.bfloat16, 512) < _gemm_rate(torch.float32, 512):
        dt = torch.float32
    return _gemm_rate(dt, 2048), str(dt).replace("torch.", "")


def _gemm_rate(dt: torch.dtype, n: int) -> float:
    key = f"gemm_{dt}" + ("" if n == 2048 else f"_{n}")
    if key not in _MEASURED:
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        _MEASURED[key] = 2 * n ** 3 / _best(lambda: a @ b, reps=3) / 1e9
    return _MEASURED[key]


def flops_rate(flops: float, seconds: float, dtype: torch.dtype, device: str = "cpu") -> str:
    gf = flops / seconds / 1e9
    if device == "cpu" and dtype in CPU_GFLOPS:
        ref, ref_dt = gemm_gflops(dtype)
        of = "" if ref_dt == str(dtype).replace("torch.", "") else f" {ref_dt}"
        return f"{gf:.0f} GFLOP/s ({100 * gf / ref:.0f}% of this run's{of} torch.mm {ref:.0f})"
    return f"{gf:.0f} GFLOP/s"


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "-"


def print_table(rows: list[Row]) -> None:
    headers = ["family", "case", "shape", "dtype", "kernkit us", "baseline", "base us", "speedup", "rate"]
    cells = [[r.family, r.case, r.shape, r.dtype, f"{r.kernkit_us:.2f}", r.baseline, f"{r.baseline_us:.2f}",
              f"{r.ratio:.2f}x", r.rate] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    print("speedup = baseline time / kernkit time, both measured in this run (> 1: kernkit is faster)")
    bw = {k: v for k, v in _MEASURED.items() if not k.startswith("gemm_")}
    if bw:
        print("memory bandwidth measured in this run: " + ", ".join(f"{k} {v:.0f} GB/s" for k, v in sorted(bw.items())))
    gemm = {k[5:].replace("torch.", ""): v for k, v in _MEASURED.items() if k.startswith("gemm_") and k.count("_") == 1}
    if gemm:
        print("torch.mm 2048^3 measured in this run: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in sorted(gemm.items())))


def rows_to_json(rows: list[Row]) -> list[dict]:
    return [dict(asdict(r), ratio=r.ratio) for r in rows]


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.case}\n{r.shape} {r.dtype}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4))
    ax.bar(range(len(rows)), [r.ratio for r in rows], color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("speedup vs baseline (x)")
    ax.set_title("kernkit vs baseline, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
