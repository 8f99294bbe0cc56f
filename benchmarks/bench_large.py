"""Large inputs: windowed attention at S = 65536 and scans at L = 2^20, each run in a fresh
child process so its peak RSS can be reported next to the size of its own inputs and
outputs. The baseline is the same op at 1/8 of the length, times 8: a ratio near 1 means
the cost stays linear in the length (windowed attention, scans)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

import kernkit

from .common import Row

FAMILY = "large"
SCALE = 8


def _tensors_mb(*ts) -> float:
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor)) / 2**20


def _case(name: str, n: int):
    """Builds inputs of length n; returns (run, tensors counted as the op's own memory)."""
    g = torch.Generator().manual_seed(0)
    if name == "attention":
        q, k, v = (torch.randn(1, n, 8, 64, generator=g).to(torch.bfloat16) for _ in range(3))
        out = []
        return (lambda: out.append(kernkit.flash_attn(q, k, v, causal=True, window=(512, -1), sinks=4))), \
            [q, k, v, q]
    if name == "selective_scan":
        D, N = 32, 16
        u, delta = torch.randn(1, D, n, generator=g), torch.rand(1, D, n, generator=g) * 0.1
        A = -torch.rand(D, N, generator=g)
        B, C = torch.randn(1, N, n, generator=g), torch.randn(1, N, n, generator=g)
        return (lambda: kernkit.selective_scan(u, delta, A, B, C, return_last_state=True)), [u, delta, B, C, u]
    if name == "selective_scan fwd+bwd":
        D, N = 32, 16
        u, delta = torch.randn(1, D, n, generator=g).requires_grad_(), (torch.rand(1, D, n, generator=g) * 0.1)
        A = -torch.rand(D, N, generator=g)
        B, C = torch.randn(1, N, n, generator=g), torch.randn(1, N, n, generator=g)
        delta.requires_grad_()

        def run():
            out = kernkit.selective_scan(u, delta, A, B, C)
            torch.autograd.grad(out.sum(), (u, delta))
        return run, [u, delta, B, C] * 2 + [u]   # inputs, their gradients, the output
    if name == "linear_scan":
        a, b = torch.rand(1, n, 64, generator=g), torch.randn(1, n, 64, generator=g)
        return (lambda: kernkit.linear_scan(a, b)), [a, b, a]
    raise ValueError(name)


CASES = {"attention": 65536, "selective_scan": 2**20, "selective_scan fwd+bwd": 2**20, "linear_scan": 2**20}
SHAPES = {"attention": "B1 S{n} H8 D64 window 512 + 4 sinks, bf16", "selective_scan": "B1 D32 N16 L{n} fp32",
          "selective_scan fwd+bwd": "B1 D32 N16 L{n} fp32", "linear_scan": "B1 T{n} C64 fp32"}


def _child(name: str, n: int) -> None:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # interpreter + torch + kernkit
    run, own = _case(name, n)
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(seconds=sorted(ts)[1], peak_mb=peak, before_mb=rss0, own_mb=_tensors_mb(*own))))


def _measure(name: str, n: int) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_large", name, str(n)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device != "cpu":
        return []
    rows = []
    for name, n in CASES.items():
        if quick and name != "attention":
            continue
        big, small = _measure(name, n), _measure(name, n // SCALE)
        rate = (f"peak RSS {big['peak_mb'] - big['before_mb']:.0f} MB above the {big['before_mb']:.0f} MB of "
                f"the interpreter, for {big['own_mb']:.0f} MB of inputs+outputs(+grads); "
                f"{n / big['seconds'] / 1e6:.2f} M positions/s")
        rows.append(Row(FAMILY, name, SHAPES[name].format(n=n), "", big["seconds"] * 1e6,
                        f"{SCALE} x the same at length {n // SCALE}", SCALE * small["seconds"] * 1e6, rate,
                        extra=dict(peak_rss_mb=big["peak_mb"], base_rss_mb=big["before_mb"], own_mb=big["own_mb"])))
    return rows


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
