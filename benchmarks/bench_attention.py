"""Attention: kernkit.flash_attn against torch's scaled_dot_product_attention
(same dtype, same threads; with an explicit boolean mask where SDPA lacks the
mask), forward, forward+backward, sliding window + sinks, KV-cache decode, and
sigmoid against kernkit's own softmax. On a GPU (--device cuda): against each
SDPA backend (flash, cuDNN, efficient) and FlexAttention, TFLOP/s and % of peak."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernkit
from kernkit.reference import attention_mask

from .common import Row, bandwidth, dtype_name, flops_rate, time_pair

FAMILY = "attention"


def _bhsd(*ts):
    return [t.transpose(1, 2) for t in ts]


def _inputs(B, S, H, D, dtype, Sk=None, Hkv=None, grad=False):
    g = torch.Generator().manual_seed(0)
    Sk, Hkv = Sk or S, Hkv or H
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_(grad)
    return mk(B, S, H, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, D)


def _fwd_rows(cases, quick):
    rows = []
    for dtype, S, D, causal in cases:
        H = 2048 // D if not quick else 8
        q, k, v = _inputs(1, S, H, D, dtype)
        qt, kt, vt = _bhsd(q, k, v)
        tk, tb = time_pair(lambda: kernkit.flash_attn(q, k, v, causal=causal),
                           lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal), quick=quick)
        flops = 4 * H * S * S * D / (2 if causal else 1)
        rows.append(Row(FAMILY, "fwd causal" if causal else "fwd", f"B1 S{S} H{H} D{D}", dtype_name(dtype),
                        tk * 1e6, "SDPA", tb * 1e6, flops_rate(flops, tk, dtype)))
    return rows


def _fwd_bwd_rows(cases, quick):
    rows = []
    for dtype, S, D in cases:
        H = 8
        q, k, v = _inputs(1, S, H, D, dtype, grad=True)
        qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
        do = torch.randn(1, S, H, D).to(dtype)
        dot = do.transpose(1, 2)

        def ours():
            torch.autograd.grad(kernkit.flash_attn(q, k, v, causal=True), (q, k, v), do)

        def sdpa():
            torch.autograd.grad(F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), (qt, kt, vt), dot)

        tk, tb = time_pair(ours, sdpa, quick=quick)
        flops = 3.5 * 4 * H * S * S * D / 2  # forward + backward (2.5x forward), causal
        rows.append(Row(FAMILY, "fwd+bwd causal", f"B1 S{S} H{H} D{D}", dtype_name(dtype), tk * 1e6, "SDPA",
                        tb * 1e6, flops_rate(flops, tk, dtype)))
    return rows


def _window_rows(quick):
    S, H, D, W, sinks = (4096, 4, 64, 512, 4) if quick else (8192, 8, 64, 512, 4)
    dtype = torch.bfloat16
    q, k, v = _inputs(1, S, H, D, dtype)
    qt, kt, vt = _bhsd(q, k, v)
    mask = attention_mask(S, S, causal=True, window=(W, -1), sinks=sinks)
    tk, tb = time_pair(lambda: kernkit.flash_attn(q, k, v, causal=True, window=(W, -1), sinks=sinks),
                       lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask), quick=True)
    pairs = float(mask.sum())
    rows = [Row(FAMILY, f"window {W}+{sinks} sinks", f"B1 S{S} H{H} D{D}", dtype_name(dtype), tk * 1e6,
                "SDPA + bool mask", tb * 1e6, flops_rate(4 * H * pairs * D, tk, dtype))]
    if not quick:
        rows.append(_flex_row(q, k, v, S, H, D, W, sinks, tk, pairs))
    # cost scaling: windowed time vs full causal time, against the ratio of visible pairs
    tc, _ = time_pair(lambda: kernkit.flash_attn(q, k, v, causal=True), lambda: None, quick=True)
    expect = pairs / (S * (S + 1) / 2)
    rows.append(Row(FAMILY, "window cost vs S*window", f"S{S} W{W}", dtype_name(dtype), tk * 1e6,
                    "causal time x pair ratio", tc * expect * 1e6,
                    f"window/causal time {tk / tc:.3f}, visible pairs {expect:.3f}"))
    return rows


def _flex_row(q, k, v, S, H, D, W, sinks, t_ours, pairs):
    """FlexAttention (torch.compile + block mask) supports sinks + window on CPU (forward only)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, qi, kj):
        return (kj <= qi) & ((qi - kj <= W) | (kj < sinks))

    block_mask = create_block_mask(mask_mod, None, None, S, S, device="cpu")
    flex = torch.compile(flex_attention)
    qt, kt, vt = _bhsd(q, k, v)
    _, tb = time_pair(lambda: None, lambda: flex(qt, kt, vt, block_mask=block_mask), quick=True)
    return Row(FAMILY, f"window {W}+{sinks} sinks", f"B1 S{S} H{H} D{D}", dtype_name(q.dtype), t_ours * 1e6,
               "FlexAttention (compiled)", tb * 1e6, flops_rate(4 * H * pairs * D, t_ours, q.dtype))


def _decode_rows(quick):
    rows = []
    # a tiny cache (8 heads, 100 keys, one appended per call): the per-call overhead (issue #20:
    # within 1.5x of SDPA's call time), both sides appending the step's key and value
    for dtype in (torch.float32, torch.bfloat16):
        H, D, L = 8, 64, 100
        g = torch.Generator().manual_seed(1)
        kc, vc = (torch.randn(1, 128, H, D, generator=g).to(dtype) for _ in range(2))
        q, k, v = (torch.randn(1, 1, H, D, generator=g).to(dtype) for _ in range(3))
        qt, kt, vt = _bhsd(q, kc[:, :L], vc[:, :L])

        def sdpa_step():
            kc[:, L - 1:L] = k
            vc[:, L - 1:L] = v
            return F.scaled_dot_product_attention(qt, kt, vt)

        tk, tb = time_pair(lambda: kernkit.flash_attn_with_kvcache(q, kc, vc, L - 1, k=k, v=v), sdpa_step,
                           quick=quick)
        rows.append(Row(FAMILY, "decode step, tiny cache", f"cache {L} H{H} D{D} (+1 key)", dtype_name(dtype),
                        tk * 1e6, "SDPA (+ slice append)", tb * 1e6, f"call time {tk / tb:.2f}x SDPA's"))
        tk, tb = time_pair(lambda: kernkit.flash_attn_with_kvcache(q, kc, vc, L),
                           lambda: F.scaled_dot_product_attention(qt, kt, vt), quick=quick)
        rows.append(Row(FAMILY, "decode call, tiny cache", f"cache {L} H{H} D{D}", dtype_name(dtype),
                        tk * 1e6, "SDPA", tb * 1e6, f"call time {tk / tb:.2f}x SDPA's"))
    Hq, Hkv, D, dtype = 32, 8, 128, torch.bfloat16
    for L in ([4096] if quick else [4096, 16384, 32768]):
        g = torch.Generator().manual_seed(0)
        kc = torch.randn(1, L, Hkv, D, generator=g).to(dtype)
        vc = torch.randn(1, L, Hkv, D, generator=g).to(dtype)
        q = torch.randn(1, 1, Hq, D, generator=g).to(dtype)
        qt, kt, vt = _bhsd(q, kc, vc)
        tk, tb = time_pair(lambda: kernkit.flash_attn_with_kvcache(q, kc, vc, L),
                           lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True), quick=quick)
        rows.append(Row(FAMILY, "decode Sq=1", f"cache {L} Hq{Hq} Hkv{Hkv} D{D}", dtype_name(dtype), tk * 1e6,
                        "SDPA (enable_gqa)", tb * 1e6, bandwidth(2 * L * Hkv * D * 2, tk)))
    return rows


def _sigmoid_rows(quick):
    S, H, D, dtype = (1024, 8, 64, torch.bfloat16) if quick else (2048, 8, 64, torch.bfloat16)
    q, k, v = _inputs(1, S, H, D, dtype)
    tk, tb = time_pair(lambda: kernkit.flash_attn(q, k, v, activation="sigmoid"),
                       lambda: kernkit.flash_attn(q, k, v), quick=quick)
    return [Row(FAMILY, "sigmoid fwd", f"B1 S{S} H{H} D{D}", dtype_name(dtype), tk * 1e6, "kernkit softmax",
                tb * 1e6, flops_rate(4 * H * S * S * D, tk, dtype))]


# ----------------------------------------------------------------------------------------- CUDA

def _gpu_peak_tflops():
    """Dense bf16 tensor-core peak of the GPU, for the fraction-of-peak column (None if unknown)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    for key, peak in (("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("A100", 312.0), ("L40", 181.0)):
        if key in name:
            return peak
    return None


def _tflops(flops, seconds):
    tf = flops / seconds / 1e12
    peak = _gpu_peak_tflops()
    return f"{tf:.0f} TFLOP/s" + (f" ({100 * tf / peak:.0f}% of {peak:.0f})" if peak else "")


def _sdpa(backend):
    """SDPA pinned to one backend (None: torch's own choice)."""
    from torch.nn.attention import sdpa_kernel

    def call(*args, **kw):
        if backend is None:
            return F.scaled_dot_product_attention(*args, **kw)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(*args, **kw)
    return call


def _sdpa_backends():
    from torch.nn.attention import SDPBackend
    return [("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION),
            ("SDPA efficient", SDPBackend.EFFICIENT_ATTENTION)]


def _pair_rows(case, shape, dtype, ours, baselines, flops, dev):
    """One row per baseline that runs here (a backend that cannot take the case is skipped)."""
    rows = []
    for name, fn in baselines:
        try:
            fn()
        except (RuntimeError, NotImplementedError, ValueError):
            continue
        tk, tb = time_pair(ours, fn, device=dev)
        rows.append(Row(FAMILY, case, shape, dtype_name(dtype), tk * 1e6, name, tb * 1e6, _tflops(flops, tk)))
    return rows


def _cuda_rows(quick, dev="cuda"):
    """On the GPU, bf16, B*S = 16k tokens, H*D = 2048: forward and forward+backward against SDPA's
    flash, cuDNN and efficient backends; window 1024 (+ sinks) at S = 16k against the SDPA backend
    that takes a mask and FlexAttention; decode over 4k-32k caches against SDPA."""
    rows, dt = [], torch.bfloat16
    seqs = [2048] if quick else [512, 2048, 8192, 16384]
    for S in seqs:
        for D in (64, 128):
            B, H = max(1, 16384 // S), 2048 // D
            q, k, v = (t.to(dev) for t in _inputs(B, S, H, D, dt))
            qt, kt, vt = _bhsd(q, k, v)
            for causal in (False, True):
                flops = 4 * B * H * S * S * D / (2 if causal else 1)
                base = [(n, (lambda f: lambda: f(qt, kt, vt, is_causal=causal))(_sdpa(b))) for n, b in _sdpa_backends()]
                rows += _pair_rows("fwd causal" if causal else "fwd", f"B{B} S{S} H{H} D{D}", dt,
                                   lambda: kernkit.flash_attn(q, k, v, causal=causal), base, flops, dev)
    for S in ([2048] if quick else [2048, 8192]):
        for D in (64, 128):
            B, H = max(1, 16384 // S), 2048 // D
            q, k, v = (t.to(dev).requires_grad_() for t in _inputs(B, S, H, D, dt))
            qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
            do = torch.randn_like(q)
            dot = do.transpose(1, 2)
            ours = lambda: torch.autograd.grad(kernkit.flash_attn(q, k, v, causal=True), (q, k, v), do)
            base = [(n, (lambda f: lambda: torch.autograd.grad(f(qt, kt, vt, is_causal=True), (qt, kt, vt), dot))(
                _sdpa(b))) for n, b in _sdpa_backends()[:2]]
            rows += _pair_rows("fwd+bwd causal", f"B{B} S{S} H{H} D{D}", dt, ours, base,
                               3.5 * 4 * B * H * S * S * D / 2, dev)
    # window 1024 (and sinks + window) at S = 16k: work ~ S * window instead of S^2 / 2
    S, H, D, W = (4096, 16, 128, 1024) if quick else (16384, 16, 128, 1024)
    q, k, v = (t.to(dev) for t in _inputs(1, S, H, D, dt))
    qt, kt, vt = _bhsd(q, k, v)
    for sinks in (0, 4):
        mask = attention_mask(S, S, causal=True, window=(W, -1), sinks=sinks).to(dev)
        pairs = float(mask.sum())
        base = [("SDPA efficient + bool mask", lambda: _sdpa(_sdpa_backends()[2][1])(qt, kt, vt, attn_mask=mask))]
        flex = _flex_cuda(qt, kt, vt, S, W, sinks)
        if flex is not None:
            base.append(("FlexAttention (compiled)", flex))
        rows += _pair_rows(f"window {W}" + (f"+{sinks} sinks" if sinks else ""), f"B1 S{S} H{H} D{D}", dt,
                           lambda: kernkit.flash_attn(q, k, v, causal=True, window=(W, -1), sinks=sinks), base,
                           4 * H * pairs * D, dev)
        del mask
    # decode: one query token over a long cache (split-KV)
    Hq, Hkv, D = 32, 8, 128
    for L in ([32768] if quick else [4096, 32768]):
        g = torch.Generator().manual_seed(0)
        kc, vc = (torch.randn(1, L, Hkv, D, generator=g).to(dt).to(dev) for _ in range(2))
        q = torch.randn(1, 1, Hq, D, generator=g).to(dt).to(dev)
        qt, kt, vt = _bhsd(q, kc, vc)
        tk, tb = time_pair(lambda: kernkit.flash_attn_with_kvcache(q, kc, vc, L),
                           lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True), device=dev)
        rows.append(Row(FAMILY, "decode Sq=1", f"cache {L} Hq{Hq} Hkv{Hkv} D{D}", dtype_name(dt), tk * 1e6,
                        "SDPA (enable_gqa)", tb * 1e6, bandwidth(2 * L * Hkv * D * 2, tk, dev)))
    # fp32: the exact non-tensor-core path, next to SDPA in fp32
    q, k, v = (t.to(dev) for t in _inputs(1, 2048, 16, 64, torch.float32))
    qt, kt, vt = _bhsd(q, k, v)
    tk, tb = time_pair(lambda: kernkit.flash_attn(q, k, v, causal=True),
                       lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), device=dev)
    rows.append(Row(FAMILY, "fwd causal (fp32 path)", "B1 S2048 H16 D64", "float32", tk * 1e6, "SDPA fp32", tb * 1e6,
                    _tflops(4 * 16 * 2048 * 2048 * 64 / 2, tk)))
    return rows


def _flex_cuda(qt, kt, vt, S, W, sinks):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def mask_mod(b, h, qi, kj):
            return (kj <= qi) & ((qi - kj <= W) | (kj < sinks))

        block_mask = create_block_mask(mask_mod, None, None, S, S, device=qt.device)
        flex = torch.compile(flex_attention)
        flex(qt, kt, vt, block_mask=block_mask)
        return lambda: flex(qt, kt, vt, block_mask=block_mask)
    except Exception:   # no triton / inductor on this machine
        return None


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device == "cuda":
        return _cuda_rows(quick)
    if quick:
        fwd = [(torch.bfloat16, 1024, 64, False), (torch.bfloat16, 1024, 128, True), (torch.float32, 1024, 64, True)]
        fb = [(torch.bfloat16, 1024, 64)]
    else:
        fwd = [(dt, S, D, c) for dt in (torch.bfloat16, torch.float32) for S in (1024, 4096) for D in (64, 128)
               for c in (False, True)]
        fb = [(dt, S, D) for dt in (torch.bfloat16, torch.float32) for S in (1024, 2048) for D in (64, 128)]
    return (_fwd_rows(fwd, quick) + _fwd_bwd_rows(fb, quick) + _window_rows(quick) + _decode_rows(quick)
            + _sigmoid_rows(quick))
