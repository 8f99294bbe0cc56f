"""RMSNorm: kernkit.rms_norm against torch.nn.functional.rms_norm.

Cases: per-call overhead on 8 elements (eager), memory-bound forward and
forward+backward (GB/s vs the machine's bandwidth), and a loop alternating a
torch matmul with the op, to show that kernkit shares torch's thread pool
instead of fighting it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernkit

from .common import Row, bandwidth, dtype_name, time_pair

FAMILY = "norm"


def _fwd_pair(x, w):
    d = x.shape[-1]
    return (lambda: kernkit.rms_norm(x, w, 1e-6)), (lambda: F.rms_norm(x, (d,), w, 1e-6))


def _fwd_bwd_pair(x, w, dy):
    d = x.shape[-1]
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()

    def ours():
        y = kernkit.rms_norm(xk, wk, 1e-6)
        torch.autograd.grad(y, (xk, wk), dy)

    def theirs():
        y = F.rms_norm(xt, (d,), wt, 1e-6)
        torch.autograd.grad(y, (xt, wt), dy)

    return ours, theirs


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(0)

    # Per-call overhead: 8 elements, eager.
    x = torch.randn(8, generator=gen).to(device)
    w = torch.randn(8, generator=gen).to(device)
    tk, tb = time_pair(*_fwd_pair(x, w), device=device, quick=quick)
    rows.append(Row(FAMILY, "overhead fwd", "(8,)", "float32", tk * 1e6, "F.rms_norm", tb * 1e6,
                    f"{tk / tb:.2f}x the baseline's call time (budget 3x)"))

    shapes = [(1, 4096), (4096, 4096)] if quick else [(1, 4096), (64, 4096), (4096, 4096), (16384, 1024)]
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            x = torch.randn(shape, generator=gen).to(dtype).to(device)
            w = torch.randn(shape[-1], generator=gen).to(dtype).to(device)
            nbytes = 2 * x.numel() * x.element_size()
            tk, tb = time_pair(*_fwd_pair(x, w), device=device, quick=quick)
            rows.append(Row(FAMILY, "fwd", str(shape), dtype_name(dtype), tk * 1e6, "F.rms_norm", tb * 1e6,
                            bandwidth(nbytes, tk, device)))
            if shape[0] * shape[1] >= 1 << 22:
                # A new multi-MB output costs page faults on every call (glibc maps
                # it fresh): x.clone() is the floor for any op returning a new tensor.
                tk2, tc = time_pair(lambda: kernkit.rms_norm(x, w, 1e-6), x.clone, device=device, quick=quick)
                rows.append(Row(FAMILY, "fwd vs copy floor", str(shape), dtype_name(dtype), tk2 * 1e6, "x.clone()",
                                tc * 1e6, bandwidth(nbytes, tc, device) + " for the copy"))
            if shape[0] > 1:
                dy = torch.randn(shape, generator=gen).to(dtype).to(device)
                # fwd reads x, writes y; bwd reads dy, x, writes dx: 5 tensor passes
                tk, tb = time_pair(*_fwd_bwd_pair(x, w, dy), device=device, quick=quick)
                rows.append(Row(FAMILY, "fwd+bwd", str(shape), dtype_name(dtype), tk * 1e6, "F.rms_norm", tb * 1e6,
                                bandwidth(2.5 * nbytes, tk, device)))

    if device == "cpu":
        rows.append(_interleave_row(quick))
    return rows


def _interleave_row(quick: bool) -> Row:
    """A loop alternating torch.mm and kernkit.rms_norm, against the sum of the
    two timed alone. Two thread pools spinning against each other would make
    the interleaved loop slower than its parts (ratio < 1)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(256, 256, generator=gen)
    x = torch.randn(512, 1024, generator=gen)
    w = torch.randn(1024, generator=gen)
    t_mm, t_norm = time_pair(lambda: torch.mm(a, a), lambda: kernkit.rms_norm(x, w, 1e-6), quick=quick)
    t_both, _ = time_pair(lambda: (torch.mm(a, a), kernkit.rms_norm(x, w, 1e-6)), lambda: None, quick=quick)
    return Row(FAMILY, "mm+norm interleaved", "mm 256^2, norm 512x1024", "float32", t_both * 1e6,
               "sum of parts alone", (t_mm + t_norm) * 1e6,
               f"threads={torch.get_num_threads()}, pool={kernkit.info()['thread_backend']}")
