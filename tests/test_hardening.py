"""Cross-op hardening: random shapes/options against the references (hypothesis),
concurrent calls from several Python threads, and inputs that must never be modified."""

import threading

import torch
from hypothesis import given, settings, strategies as st

import kernkit
from kernkit.reference import (causal_conv1d_ref, flash_attn_ref, linear_scan_ref, selective_scan_ref,
                               ternary_linear_ref, ternary_quantize_ref)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 2), Sq=st.integers(1, 70), Sk=st.integers(1, 70), hkv=st.sampled_from([1, 2]),
       group=st.sampled_from([1, 3]), D=st.integers(1, 40), Dv=st.integers(1, 40), causal=st.booleans(),
       left=st.integers(-1, 30), right=st.integers(-1, 30), sinks=st.integers(0, 5),
       softcap=st.sampled_from([0.0, 5.0]), act=st.sampled_from(["softmax", "sigmoid"]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), transpose=st.booleans())
def test_attention_property(B, Sq, Sk, hkv, group, D, Dv, causal, left, right, sinks, softcap, act, dtype, transpose):
    g = torch.Generator().manual_seed(Sq * 131 + Sk)
    Hq = hkv * group
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    if transpose:  # strided (B, H, S, D) storage viewed as (B, S, H, D)
        q, k, v = mk(B, Hq, Sq, D).transpose(1, 2), mk(B, hkv, Sk, D).transpose(1, 2), mk(B, hkv, Sk, Dv).transpose(1, 2)
    else:
        q, k, v = mk(B, Sq, Hq, D), mk(B, Sk, hkv, D), mk(B, Sk, hkv, Dv)
    kw = dict(causal=causal, window=(left, right), sinks=sinks, softcap=softcap, activation=act)
    out = kernkit.flash_attn(q, k, v, **kw)
    exact, _ = flash_attn_ref(q.double(), k.double(), v.double(), **kw)
    same, _ = flash_attn_ref(q, k, v, **kw)
    err = (out.double() - exact).abs().max().item()
    ref_err = (same.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + (1e-5 if dtype == torch.float32 else 1e-2), (err, ref_err)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), D=st.integers(1, 9), N=st.integers(1, 20), L=st.integers(1, 90),
       var=st.booleans(), softplus=st.booleans(), gate=st.booleans(), h0=st.booleans())
def test_selective_scan_property(B, D, N, L, var, softplus, gate, h0):
    g = torch.Generator().manual_seed(B * 1000 + D * 100 + N * 10 + L)
    u, delta = torch.randn(B, D, L, generator=g), torch.rand(B, D, L, generator=g)
    A = -torch.rand(D, N, generator=g) - 0.1
    Bm = torch.randn(B, N, L, generator=g) if var else torch.randn(D, N, generator=g)
    Cm = torch.randn(B, N, L, generator=g) if var else torch.randn(D, N, generator=g)
    kw = dict(D=torch.randn(D, generator=g), delta_softplus=softplus,
              z=torch.randn(B, D, L, generator=g) if gate else None,
              initial_state=torch.randn(B, D, N, generator=g) if h0 else None)
    out = kernkit.selective_scan(u, delta, A, Bm, Cm, **kw)
    ref = selective_scan_ref(u.double(), delta.double(), A.double(), Bm.double(), Cm.double(),
                             **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    torch.testing.assert_close(out.double(), ref, rtol=6e-4, atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 300), C=st.integers(1, 70), W=st.integers(1, 6))
def test_scan_and_conv_property(B, T, C, W):
    g = torch.Generator().manual_seed(B + T * 7 + C * 13 + W)
    a, b = torch.rand(B, T, C, generator=g), torch.randn(B, T, C, generator=g)
    torch.testing.assert_close(kernkit.linear_scan(a, b), linear_scan_ref(a, b), rtol=1e-5, atol=1e-5)
    x, w = torch.randn(B, C, T, generator=g), torch.randn(C, W, generator=g)
    torch.testing.assert_close(kernkit.causal_conv1d(x, w, activation="silu"),
                               causal_conv1d_ref(x, w, activation="silu"), rtol=1e-5, atol=1e-5)


def test_concurrent_calls_from_threads():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 64, 4, 32, generator=g), torch.randn(1, 64, 2, 32, generator=g), \
        torch.randn(1, 64, 2, 32, generator=g)
    w = torch.randn(40, 300, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    x = torch.randn(3, 300, generator=g)
    a, b = torch.rand(2, 500, 33, generator=g), torch.randn(2, 500, 33, generator=g)
    expected = [kernkit.flash_attn(q, k, v, causal=True), kernkit.ternary_linear(x, packed, scale),
                kernkit.linear_scan(a, b)]
    errors = []

    def worker():
        try:
            for _ in range(15):
                got = [kernkit.flash_attn(q, k, v, causal=True), kernkit.ternary_linear(x, packed, scale),
                       kernkit.linear_scan(a, b)]
                if not all(torch.equal(p, r) for p, r in zip(got, expected)):
                    errors.append("mismatch")
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_inputs_never_modified():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 100, generator=g)
    x = torch.randn(4, 100, generator=g).to(torch.bfloat16)
    packed, scale = kernkit.ternary_quantize(w)
    tensors = [w, x, packed, scale]
    before = [t.clone() for t in tensors]
    kernkit.ternary_linear(x, packed, scale)
    kernkit.binary_linear(x, *kernkit.binary_quantize(w), binarize_input=True)
    u = torch.randn(2, 3, 20, generator=g)
    A, Bm = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 20, generator=g)
    ins = [u, u.abs(), A, Bm, Bm.clone()]
    copies = [t.clone() for t in ins]
    kernkit.selective_scan(*ins, delta_softplus=True)
    assert all(torch.equal(p, q) for p, q in zip(tensors + ins, before + copies))
    w_q, s = ternary_quantize_ref(w)
    assert torch.equal(kernkit.ternary_linear(x, packed, scale), ternary_linear_ref(x, w_q, s))
