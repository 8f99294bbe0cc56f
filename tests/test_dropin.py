"""Calls that users migrating from flash-attn, flash-linear-attention and causal-conv1d make with
those packages' conventions: int64 offsets, integral scalars given as tensors or numpy integers,
states in the input dtype."""

import numpy as np
import pytest
import torch

import kernkit
from kernkit.reference import flash_attn_ref, linear_attn_recurrent_ref


def _qkv(S=40, H=2, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, S, H, D, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("make", [lambda x: torch.tensor(x), lambda x: torch.tensor(x, dtype=torch.int32),
                                  np.int64, np.int32, int], ids=["tensor-int64", "tensor-int32", "np.int64",
                                                                 "np.int32", "int"])
def test_flash_attn_integral_scalars(make):
    q, k, v = _qkv()
    ref = kernkit.flash_attn(q, k, v, causal=True, window=(7, 0), sinks=2)
    out = kernkit.flash_attn(q, k, v, causal=True, window=(make(7), make(0)), sinks=make(2))
    assert torch.equal(out, ref)
    cu = torch.tensor([0, 15, 40], dtype=torch.int64)
    qv, kv, vv = (t[0] for t in (q, k, v))
    a = kernkit.flash_attn_varlen(qv, kv, vv, cu, cu, make(25), make(25), window=(make(5), make(-1)))
    b = kernkit.flash_attn_varlen(qv, kv, vv, cu.int(), cu.int(), 25, 25, window=(5, -1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, exc", [(1.0, TypeError), (True, TypeError), (torch.tensor(1.0), TypeError),
                                      (torch.tensor([1]), TypeError), (torch.tensor(True), TypeError),
                                      (np.float32(2.0), TypeError), ("3", TypeError), (-2, ValueError)])
def test_flash_attn_rejects_non_integral_window_and_sinks(bad, exc):
    q, k, v = _qkv()
    with pytest.raises(exc, match="window"):
        kernkit.flash_attn(q, k, v, window=(bad, -1))
    if not (isinstance(bad, int) and bad == -2):
        with pytest.raises(exc, match="sinks"):
            kernkit.flash_attn(q, k, v, sinks=bad)
    qv = q[0]
    cu = torch.tensor([0, 40], dtype=torch.int32)
    with pytest.raises((TypeError, ValueError), match="max_seqlen_q"):
        kernkit.flash_attn_varlen(qv, qv, qv, cu, cu, bad, 40)


def test_varlen_int64_offsets_match_reference():
    g = torch.Generator().manual_seed(1)
    lens = [0, 9, 23]
    cu = torch.tensor([0, 0, 9, 32], dtype=torch.int64)
    q, k, v = (torch.randn(32, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    out = kernkit.flash_attn_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True)
    for b in range(3):
        s, e = int(cu[b]), int(cu[b + 1])
        if e > s:
            ref = flash_attn_ref(q[None, s:e], k[None, s:e], v[None, s:e], causal=True)[0][0]
            torch.testing.assert_close(out[s:e], ref)
    assert cu.dtype == torch.int64  # the caller's tensor is not modified


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_linear_attn_initial_state_in_input_dtype_and_int64_offsets(dtype):
    g = torch.Generator().manual_seed(2)
    T, H, K, V = 50, 2, 16, 8
    q, k = (torch.randn(1, T, H, K, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(1, T, H, V, generator=g).to(dtype)
    gate = -torch.rand(1, T, H, generator=g) * 0.2
    cu64 = torch.tensor([0, 20, 20, 50])
    h0 = torch.randn(3, H, K, V, generator=g).to(dtype).requires_grad_()
    o, ht = kernkit.linear_attn(q, k, v, gate.to(dtype), initial_state=h0, output_final_state=True, cu_seqlens=cu64)
    h32 = h0.detach().float().requires_grad_()
    o2, ht2 = kernkit.linear_attn(q, k, v, gate.to(dtype), initial_state=h32, output_final_state=True,
                                  cu_seqlens=cu64.int())
    assert torch.equal(o, o2) and torch.equal(ht, ht2) and ht.dtype == torch.float32
    (o.float().sum() + ht.sum()).backward()
    (o2.float().sum() + ht2.sum()).backward()
    assert h0.grad.dtype == dtype
    torch.testing.assert_close(h0.grad, h32.grad.to(dtype), rtol=0, atol=0)
    # and against the fp64 reference, per sequence
    qd, kd, vd = (t.double() for t in (q, k, v))
    for n, (s, e) in enumerate([(0, 20), (20, 20), (20, 50)]):
        ref_o, ref_h = linear_attn_recurrent_ref(qd[:, s:e], kd[:, s:e], vd[:, s:e], gate[:, s:e].to(dtype).double(),
                                       initial_state=h0[n:n + 1].detach().double(), output_final_state=True)
        tol = 1e-4 if dtype == torch.float32 else 0.05
        torch.testing.assert_close(ht[n:n + 1].double(), ref_h, rtol=tol, atol=tol)
        if e > s:
            torch.testing.assert_close(o[:, s:e].double(), ref_o, rtol=tol, atol=tol)
