"""Large inputs: windowed attention at S = 65536 and scans at L = 2^20 give correct results
far from the start of the sequence (no index overflow, no drift). Peak memory is reported
by `python -m benchmarks --only large`."""

import pytest
import torch

import kernkit
from kernkit.reference import flash_attn_ref, selective_scan_ref

pytestmark = pytest.mark.slow


def test_windowed_attention_65536():
    S, H, D, W, sinks = 65536, 4, 64, 512, 4
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, S, H, D, generator=g).to(torch.bfloat16) for _ in range(3))
    out = kernkit.flash_attn(q, k, v, causal=True, window=(W, -1), sinks=sinks)
    for i in (0, 3, 600, 40000, S - 1):   # rows near the start, in the middle and at the end
        keys = torch.cat([torch.arange(min(sinks, max(i - W, 0))), torch.arange(max(i - W, 0), i + 1)])
        exact, _ = flash_attn_ref(q[:, i:i + 1].double(), k[:, keys].double(), v[:, keys].double())
        assert (out[:, i].double() - exact[:, 0]).abs().max() < 0.02, i


def test_linear_scan_2_pow_20():
    T, C = 2**20, 16
    g = torch.Generator().manual_seed(1)
    b = torch.randn(1, T, C, generator=g)
    h = kernkit.linear_scan(torch.ones(1, T, C), b)          # a = 1: a running sum
    exact = torch.cumsum(b.double(), dim=1)
    assert (h.double() - exact).abs().max() < 1e-3 * exact.abs().max()


def test_selective_scan_2_pow_20_state_handover():
    L, D, N, tail = 2**20, 4, 16, 512
    g = torch.Generator().manual_seed(2)
    u, B, C = torch.randn(1, D, L, generator=g), torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g)
    delta = torch.rand(1, D, L, generator=g) * 0.05
    A = -torch.rand(D, N, generator=g) - 0.1
    out, last = kernkit.selective_scan(u, delta, A, B, C, return_last_state=True)
    # the last `tail` steps, recomputed by the reference from the kernel's state before them
    _, mid = kernkit.selective_scan(u[..., :-tail], delta[..., :-tail], A, B[..., :-tail], C[..., :-tail],
                                    return_last_state=True)
    ref_out, ref_last = selective_scan_ref(u[..., -tail:].double(), delta[..., -tail:].double(), A.double(),
                                           B[..., -tail:].double(), C[..., -tail:].double(),
                                           initial_state=mid.double(), return_last_state=True)
    assert (out[..., -tail:].double() - ref_out).abs().max() < 1e-3
    assert (last.double() - ref_last).abs().max() < 1e-3
