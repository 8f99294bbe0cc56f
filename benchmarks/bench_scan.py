"""Scans: kernkit.selective_scan against the sequential PyTorch reference
(selective_scan_ref's algorithm, `unbind` slices), kernkit.linear_scan against a
PyTorch loop and the cumsum log-space trick, kernkit.causal_conv1d against
F.conv1d (groups=D, padded) + slice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernkit
from kernkit.reference import causal_conv1d_update_ref, linear_scan_ref, selective_scan_ref

from .common import Row, bandwidth, dtype_name, time_pair

FAMILY = "scan"


def _selective_rows(quick):
    rows = []
    Bsz, Dm, N, L = (1, 256, 16, 1024) if quick else (1, 1536, 16, 2048)
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(Bsz, Dm, L, generator=g).to(dtype)
        delta = (torch.rand(Bsz, Dm, L, generator=g) * 0.5).to(dtype)
        A = -torch.rand(Dm, N, generator=g)
        B = torch.randn(Bsz, N, L, generator=g).to(dtype)
        C = torch.randn(Bsz, N, L, generator=g).to(dtype)
        Dv = torch.randn(Dm, generator=g)
        z = torch.randn(Bsz, Dm, L, generator=g).to(dtype)
        kw = dict(D=Dv, z=z, delta_softplus=True)
        updates = Bsz * Dm * N * L
        tk, tb = time_pair(lambda: kernkit.selective_scan(u, delta, A, B, C, **kw),
                           lambda: selective_scan_ref(u, delta, A, B, C, **kw), quick=True)
        shape = f"B{Bsz} D{Dm} N{N} L{L}"
        rows.append(Row(FAMILY, "selective_scan fwd", shape, dtype_name(dtype), tk * 1e6, "PyTorch sequential ref",
                        tb * 1e6, _update_rate(updates, tk)))
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        dout = torch.randn_like(u)

        def fb(fn):
            return lambda: torch.autograd.grad(fn(*leaves, **kw), leaves, dout)

        tk, tb = time_pair(fb(kernkit.selective_scan), fb(selective_scan_ref), quick=True)
        rows.append(Row(FAMILY, "selective_scan fwd+bwd", shape, dtype_name(dtype), tk * 1e6,
                        "PyTorch sequential ref", tb * 1e6, _update_rate(updates, tk)))
    return rows


# A state update is exp(dt A) (about 9 FMA-pipe operations per vector with kernkit's exp2: product,
# polynomial, scaling) and three FMAs: ~12 FMA-pipe operations per Vec::size updates. Two cores with
# two 256-bit FMA pipes at ~3.1 GHz (this machine; Zen 4 runs a 512-bit operation as two halves, the
# same lane rate) issue ~12.4 G such operations per second: ~8.3 G updates/s.
UPDATE_BOUND = 2 * 2 * 3.1e9 * 8 / 12


def _update_rate(updates, seconds):
    rate = updates / seconds
    return f"{rate / 1e9:.2f} G updates/s ({100 * rate / UPDATE_BOUND:.0f}% of ~{UPDATE_BOUND / 1e9:.1f} compute bound)"


def _linear_scan_rows(quick):
    rows = []
    Bsz, T, C = (2, 1024, 512) if quick else (4, 4096, 1024)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(Bsz, T, C, generator=g) * 0.5 + 0.5
    b = torch.randn(Bsz, T, C, generator=g)
    nbytes = 3 * a.numel() * 4
    tk, tb = time_pair(lambda: kernkit.linear_scan(a, b), lambda: linear_scan_ref(a, b), quick=True)
    rows.append(Row(FAMILY, "linear_scan", f"B{Bsz} T{T} C{C}", "float32", tk * 1e6, "PyTorch loop", tb * 1e6,
                    bandwidth(nbytes, tk)))

    def log_space():  # the usual workaround: h = exp(cumsum log a) * cumsum(b * exp(-cumsum log a))
        a_star = torch.cumsum(torch.log(a), 1)
        return torch.exp(a_star) * torch.cumsum(b * torch.exp(-a_star), 1)

    tk, tb = time_pair(lambda: kernkit.linear_scan(a, b), log_space, quick=quick)
    rows.append(Row(FAMILY, "linear_scan", f"B{Bsz} T{T} C{C}", "float32", tk * 1e6, "cumsum log-space trick",
                    tb * 1e6, bandwidth(nbytes, tk)))
    # few channels, long sequence: the time-chunked path
    a1, b1 = a[:1, :, :8].repeat(1, 64, 1).contiguous(), b[:1, :, :8].repeat(1, 64, 1).contiguous()
    tk, tb = time_pair(lambda: kernkit.linear_scan(a1, b1), lambda: linear_scan_ref(a1, b1), quick=True)
    rows.append(Row(FAMILY, "linear_scan (time-chunked)", f"B1 T{a1.shape[1]} C8", "float32", tk * 1e6,
                    "PyTorch loop", tb * 1e6, bandwidth(3 * a1.numel() * 4, tk)))
    return rows


def _conv_rows(quick):
    rows = []
    Bsz, Dm, L = (2, 512, 1024) if quick else (4, 1536, 2048)
    for dtype in (torch.float32, torch.bfloat16):
        for W in (4,):
            g = torch.Generator().manual_seed(2)
            x = torch.randn(Bsz, Dm, L, generator=g).to(dtype)
            w = torch.randn(Dm, W, generator=g).to(dtype)
            bias = torch.randn(Dm, generator=g).to(dtype)
            tk, tb = time_pair(lambda: kernkit.causal_conv1d(x, w, bias, activation="silu"),
                               lambda: F.silu(F.conv1d(x, w.unsqueeze(1), bias, padding=W - 1, groups=Dm)[..., :L]),
                               quick=quick)
            rows.append(Row(FAMILY, f"causal_conv1d W{W} silu", f"B{Bsz} D{Dm} L{L}", dtype_name(dtype), tk * 1e6,
                            "F.conv1d + slice", tb * 1e6, bandwidth(2 * x.numel() * x.element_size(), tk)))
    # Mamba under autocast: bf16 activations, fp32 weights, packed sequences (seq_idx, 4 per row);
    # the baseline converts to fp32, convolves each packed sequence on its own and converts back.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(Bsz, Dm, L, generator=g).to(torch.bfloat16)
    w, bias = torch.randn(Dm, 4, generator=g), torch.randn(Dm, generator=g)
    cuts = [0, L // 4, L // 2, 3 * L // 4, L]
    seq = torch.repeat_interleave(torch.arange(4, dtype=torch.int32), torch.tensor(cuts).diff())[None].repeat(Bsz, 1)

    def per_sequence():
        xf = x.float()
        parts = [F.silu(F.conv1d(xf[..., a:b], w.unsqueeze(1), bias, padding=3, groups=Dm)[..., :b - a])
                 for a, b in zip(cuts, cuts[1:])]
        return torch.cat(parts, -1).to(x.dtype)

    tk, tb = time_pair(lambda: kernkit.causal_conv1d(x, w, bias, activation="silu", seq_idx=seq), per_sequence,
                       quick=quick)
    rows.append(Row(FAMILY, "causal_conv1d W4 silu, fp32 w, seq_idx", f"B{Bsz} D{Dm} L{L} 4 seqs", "bfloat16",
                    tk * 1e6, "fp32 F.conv1d per sequence", tb * 1e6, bandwidth(2 * x.numel() * x.element_size(), tk)))
    rows.append(_conv_update_row(quick))
    return rows


def _conv_update_row(quick):
    """One decode token through the rolling conv state (Mamba: D = 2 x 2560, state W = 4), against
    causal-conv1d's PyTorch update (cat, conv1d over the window, copy the state back)."""
    from kernkit.reference import causal_conv1d_update_ref

    g = torch.Generator().manual_seed(4)
    Bsz, Dm, W = 1, 5120, 4
    x, w, bias = (torch.randn(*s, generator=g) for s in [(Bsz, Dm), (Dm, W), (Dm,)])
    s_k, s_t = torch.randn(Bsz, Dm, W, generator=g), torch.randn(Bsz, Dm, W, generator=g)
    with torch.no_grad():
        tk, tb = time_pair(lambda: kernkit.causal_conv1d_update(x, s_k, w, bias, activation="silu"),
                           lambda: causal_conv1d_update_ref(x, s_t, w, bias, activation="silu"), quick=quick)
    return Row(FAMILY, "causal_conv1d_update, 1 token", f"B{Bsz} D{Dm} W{W} state {W}", "float32", tk * 1e6,
               "PyTorch update", tb * 1e6, bandwidth(4 * (2 * W + 2) * Bsz * Dm, tk))


def _mamba_selective_scan():
    try:  # mamba-ssm's CUDA kernel, when it is installed next to kernkit
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn, "mamba-ssm selective_scan_fn"
    except Exception:
        return selective_scan_ref, "PyTorch sequential ref"


def _cuda_rows(quick, dev="cuda"):
    """On the GPU: selective scan (fwd, fwd+bwd) against mamba-ssm when importable; linear_scan's
    bandwidth against a device copy; causal_conv1d and its one-token update."""
    rows = []
    g = torch.Generator().manual_seed(0)
    theirs, name = _mamba_selective_scan()
    Bsz, Dm, N, L = (1, 1536, 16, 2048) if quick else (4, 1536, 16, 2048)
    for dtype in (torch.float32, torch.bfloat16):
        u = torch.randn(Bsz, Dm, L, generator=g).to(dtype).to(dev)
        delta = (torch.rand(Bsz, Dm, L, generator=g) * 0.5).to(dtype).to(dev)
        A = -torch.rand(Dm, N, generator=g).to(dev)
        B = torch.randn(Bsz, N, L, generator=g).to(dtype).to(dev)
        C = torch.randn(Bsz, N, L, generator=g).to(dtype).to(dev)
        kw = dict(D=torch.randn(Dm, generator=g).to(dev), z=torch.randn(Bsz, Dm, L, generator=g).to(dtype).to(dev),
                  delta_softplus=True)
        shape = f"B{Bsz} D{Dm} N{N} L{L}"
        tk, tb = time_pair(lambda: kernkit.selective_scan(u, delta, A, B, C, **kw),
                           lambda: theirs(u, delta, A, B, C, **kw), device=dev, quick=True)
        updates = Bsz * Dm * N * L
        rows.append(Row(FAMILY, "selective_scan fwd", shape, dtype_name(dtype), tk * 1e6, name, tb * 1e6,
                        f"{updates / tk / 1e9:.0f} G state updates/s"))
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
        dout = torch.randn_like(u)

        def fb(fn):
            return lambda: torch.autograd.backward(fn(*leaves, **kw), dout)

        tk, tb = time_pair(fb(kernkit.selective_scan), fb(theirs), device=dev, quick=True)
        rows.append(Row(FAMILY, "selective_scan fwd+bwd", shape, dtype_name(dtype), tk * 1e6, name, tb * 1e6,
                        "deterministic (kernkit)"))
    a = torch.rand(1, 8192, 4096, generator=g).to(dev)
    b = torch.randn(1, 8192, 4096, generator=g).to(dev)
    tk, tc = time_pair(lambda: kernkit.linear_scan(a, b), lambda: torch.add(a, b), device=dev, quick=quick)
    rows.append(Row(FAMILY, "linear_scan", "B1 T8192 C4096", "float32", tk * 1e6, "torch.add (same bytes)", tc * 1e6,
                    bandwidth(3 * a.numel() * 4, tk, dev)))
    x = torch.randn(4, 4096, 2048, generator=g).to(torch.bfloat16).to(dev)
    w = torch.randn(4096, 4, generator=g).to(dev)
    xb, wb = x, w.to(torch.bfloat16)[:, None, :]
    tk, tb = time_pair(lambda: kernkit.causal_conv1d(x, w, activation="silu"),
                       lambda: F.silu(F.conv1d(xb, wb, padding=3, groups=4096)[..., :2048]), device=dev, quick=quick)
    rows.append(Row(FAMILY, "causal_conv1d fwd", "B4 D4096 L2048 W4", "bfloat16", tk * 1e6, "F.conv1d groups=D",
                    tb * 1e6, bandwidth(2 * x.numel() * 2, tk, dev)))
    xs = torch.randn(1, 4096, generator=g).to(dev)
    state = torch.randn(1, 4096, 4, generator=g).to(dev)
    st_ref = state.clone()
    with torch.no_grad():
        tk, tb = time_pair(lambda: kernkit.causal_conv1d_update(xs, state, w, activation="silu"),
                           lambda: causal_conv1d_update_ref(xs, st_ref, w, activation="silu"), device=dev, quick=quick)
    rows.append(Row(FAMILY, "causal_conv1d_update, 1 token", "B1 D4096 W4", "float32", tk * 1e6, "PyTorch update",
                    tb * 1e6, "target < 10 us per call"))
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device == "cuda":
        return _cuda_rows(quick)
    return _selective_rows(quick) + _linear_scan_rows(quick) + _conv_rows(quick)
