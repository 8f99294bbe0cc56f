"""Cross-op hardening: random shapes/options against the references (hypothesis),
concurrent calls from several Python threads, and inputs that must never be modified."""

import threading

import torch
from hypothesis import given, settings, strategies as st

import kernkit
from kernkit.reference import (binary_linear_ref, binary_quantize_ref, causal_conv1d_ref, flash_attn_ref,
                               flash_attn_varlen_ref,
                               linear_attn_recurrent_ref, linear_scan_ref, rms_norm_ref, selective_scan_ref,
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
@given(lens=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=4),
       hkv=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]), D=st.integers(1, 40), causal=st.booleans(),
       left=st.integers(-1, 20), sinks=st.integers(0, 3), act=st.sampled_from(["softmax", "sigmoid"]))
def test_varlen_property(lens, hkv, group, D, causal, left, sinks, act):
    g = torch.Generator().manual_seed(sum(a * 41 + b for a, b in lens) + D)
    cu_q = torch.tensor([0] + [a for a, _ in lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + [b for _, b in lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    q = torch.randn(int(cu_q[-1]), hkv * group, D, generator=g)
    k, v = torch.randn(int(cu_k[-1]), hkv, D, generator=g), torch.randn(int(cu_k[-1]), hkv, D, generator=g)
    kw = dict(causal=causal, window=(left, -1), sinks=sinks, activation=act)
    out = kernkit.flash_attn_varlen(q, k, v, cu_q, cu_k, max(a for a, _ in lens), max(b for _, b in lens), **kw)
    ref, _ = flash_attn_varlen_ref(q.double(), k.double(), v.double(), cu_q, cu_k, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 4), cap=st.integers(1, 60), new=st.integers(0, 3), D=st.integers(1, 40),
       window=st.integers(-1, 30), sinks=st.integers(0, 3), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_kvcache_property(B, cap, new, D, window, sinks, dtype):
    g = torch.Generator().manual_seed(B * 1000 + cap * 10 + new + D)
    kc, vc = (torch.randn(B, cap + new, 2, D, generator=g).to(dtype) for _ in range(2))
    lens = torch.randint(0, cap + 1, (B,), generator=g, dtype=torch.int32)
    q = torch.randn(B, max(new, 1), 4, D, generator=g).to(dtype)
    kn, vn = (torch.randn(B, new, 2, D, generator=g).to(dtype) for _ in range(2)) if new else (None, None)
    kw = dict(causal=True, window=(window, -1), sinks=sinks)
    k_all, v_all = kc.clone(), vc.clone()
    out = kernkit.flash_attn_with_kvcache(q, kc, vc, lens, k=kn, v=vn, **kw)
    for b in range(B):
        n = int(lens[b])
        if new:
            k_all[b, n:n + new], v_all[b, n:n + new] = kn[b], vn[b]
        exact, _ = flash_attn_ref(q[b:b + 1].double(), k_all[b:b + 1, :n + new].double(),
                                  v_all[b:b + 1, :n + new].double(), **kw)
        same, _ = flash_attn_ref(q[b:b + 1], k_all[b:b + 1, :n + new], v_all[b:b + 1, :n + new], **kw)
        err = (out[b:b + 1].double() - exact).abs().max().item() if exact.numel() else 0.0
        ref_err = (same.double() - exact).abs().max().item() if exact.numel() else 0.0
        assert err <= 2 * ref_err + (1e-5 if dtype == torch.float32 else 1e-2)
    assert torch.equal(kc, k_all) and torch.equal(vc, v_all)


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


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 150), H=st.integers(1, 3), K=st.integers(1, 40), V=st.integers(1, 40),
       gate=st.sampled_from(["none", "head", "scalar", "vector"]), h0=st.booleans(),
       chunk=st.sampled_from([16, 64]), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_linear_attn_property(B, T, H, K, V, gate, h0, chunk, dtype):
    g = torch.Generator().manual_seed(B + T * 7 + H * 13 + K * 17 + V)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    q, k, v = mk(B, T, H, K), mk(B, T, H, K), mk(B, T, H, V)
    gshape = {"none": None, "head": (H,), "scalar": (B, T, H), "vector": (B, T, H, K)}[gate]
    gt = None if gshape is None else (-torch.rand(*gshape, generator=g) * 0.5).to(dtype if gate != "head" else
                                                                                  torch.float32)
    s0 = torch.randn(B, H, K, V, generator=g) if h0 else None
    o, st_ = kernkit.linear_attn(q, k, v, gt, initial_state=s0, output_final_state=True, chunk_size=chunk)
    ro, rs = linear_attn_recurrent_ref(q.double(), k.double(), v.double(), None if gt is None else gt.double(),
                                       initial_state=None if s0 is None else s0.double(), output_final_state=True)
    same, _ = linear_attn_recurrent_ref(q, k, v, gt, initial_state=s0, output_final_state=True)
    tol = (1e-4 if dtype == torch.float32 else 2e-2) * max(1.0, ro.abs().max().item())
    assert (o.double() - ro).abs().max() <= 2 * (same.double() - ro).abs().max() + tol
    assert (st_.double() - rs).abs().max() <= tol * 10


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), d=st.integers(1, 300), weight=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_rms_norm_property(rows, d, weight, dtype):
    g = torch.Generator().manual_seed(rows * 1000 + d)
    x = torch.randn(rows, d, generator=g).to(dtype)
    w = torch.randn(d, generator=g).to(dtype) if weight else None
    out = kernkit.rms_norm(x, w)
    exact = rms_norm_ref(x.double(), None if w is None else w.double())
    same = rms_norm_ref(x, w)
    assert (out.double() - exact).abs().max() <= 2 * (same.double() - exact).abs().max() + 1e-5


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 20), N=st.integers(1, 40), K=st.integers(1, 300), per_row=st.booleans(),
       act8=st.booleans(), binarize=st.booleans())
def test_lowbit_property(M, N, K, per_row, act8, binarize):
    g = torch.Generator().manual_seed(M * 10000 + N * 100 + K)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    packed, scale = kernkit.ternary_quantize(w, per_row=per_row)
    w_q, scale_ref = ternary_quantize_ref(w, per_row=per_row)
    assert torch.equal(kernkit.ternary_unpack(packed, (N, K)), w_q) and torch.equal(scale, scale_ref)
    y = kernkit.ternary_linear(x, packed, scale, act_bits=8 if act8 else None)
    ref = ternary_linear_ref(x, w_q, scale_ref, act_bits=8 if act8 else None)
    if act8:   # the integer path is exact, then the same fp32 rescale
        assert torch.equal(y, ref)
    else:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    pb, alpha = kernkit.binary_quantize(w)
    sign, alpha_ref = binary_quantize_ref(w)
    yb = kernkit.binary_linear(x, pb, alpha, binarize_input=binarize)
    torch.testing.assert_close(yb, binary_linear_ref(x, sign, alpha_ref, binarize_input=binarize),
                               rtol=1e-5, atol=1e-4)


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
