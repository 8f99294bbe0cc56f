import math

import pytest
import torch

import kernkit
from kernkit.reference import flash_attn_ref, flash_attn_varlen_ref
from helpers import assert_within_ref_error, max_err

LOWP = [torch.float32, torch.bfloat16, torch.float16]

# (B, Sq, Sk, Hq, Hkv, D, Dv)
SHAPES = [
    (1, 1, 1, 1, 1, 32, 32),
    (2, 17, 17, 4, 4, 64, 64),
    (1, 59, 127, 8, 1, 40, 40),      # MQA, Sq < Sk
    (2, 127, 59, 4, 2, 64, 48),      # Sq > Sk, Dv != D
    (1, 1, 300, 8, 2, 128, 128),     # decode-shaped
    (1, 200, 200, 2, 2, 96, 96),
    (2, 2, 77, 4, 1, 64, 64),        # 8 rows per KV head: the decode path with per-row masks
]

MASKS = [
    dict(),
    dict(causal=True),
    dict(window=(16, -1)),
    dict(window=(7, 5)),
    dict(causal=True, window=(20, -1), sinks=3),
    dict(causal=True, softcap=5.0),
    dict(activation="sigmoid"),
    dict(activation="sigmoid", causal=True, window=(9, 0), sinks=2, sigmoid_bias=-1.5),
]


def _qkv(shape, dtype, seed=0, scale=1.0):
    B, Sq, Sk, Hq, Hkv, D, Dv = shape
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)
    return mk(B, Sq, Hq, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, Dv)


def _check_fwd(q, k, v, kw):
    out = kernkit.flash_attn(q, k, v, **kw)
    exact, lse_exact = flash_attn_ref(q.double(), k.double(), v.double(), **kw)
    same, _ = flash_attn_ref(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == exact.shape
    assert not torch.isnan(out).any()
    assert_within_ref_error(out, exact, same)
    if kw.get("activation", "softmax") == "softmax":
        _, lse = kernkit.flash_attn(q, k, v, return_lse=True, **kw)
        assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
        finite = torch.isfinite(lse_exact)
        assert torch.equal(torch.isfinite(lse), finite)
        assert max_err(lse[finite], lse_exact[finite]) < 1e-3


@pytest.mark.parametrize("kw", MASKS, ids=lambda kw: "-".join(f"{a}={b}" for a, b in kw.items()) or "full")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_fp32_every_isa(isa, shape, kw):
    _check_fwd(*_qkv(shape, torch.float32), kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", MASKS, ids=lambda kw: "-".join(f"{a}={b}" for a, b in kw.items()) or "full")
@pytest.mark.parametrize("shape", SHAPES[1:5], ids=str)
def test_forward_16bit(isa, shape, kw, dtype):
    _check_fwd(*_qkv(shape, dtype), kw)


@pytest.mark.parametrize("d", [1, 8, 40, 64, 80, 96, 111, 128, 256])
def test_head_dims(d):
    _check_fwd(*_qkv((1, 33, 45, 2, 1, d, d), torch.float32), dict(causal=True))
    _check_fwd(*_qkv((1, 20, 20, 2, 2, d, max(1, d // 2)), torch.bfloat16), dict())


@pytest.mark.parametrize("sq", [1, 17, 59, 127, 1000])
def test_lengths(sq):
    _check_fwd(*_qkv((1, sq, sq + 3, 2, 1, 64, 64), torch.bfloat16), dict(causal=True, window=(100, -1), sinks=4))


def test_rows_with_no_visible_key():
    # Sq > Sk with a causal mask: the first Sq - Sk rows see nothing -> 0 output, lse -inf, finite grads
    q, k, v = _qkv((1, 20, 8, 2, 2, 16, 16), torch.float32)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out, lse = kernkit.flash_attn(q, k, v, causal=True, return_lse=True)
    assert torch.all(out[:, :12] == 0) and torch.all(torch.isneginf(lse[:, :, :12]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.all(q.grad[:, :12] == 0)


def _grads(fn, inputs, dout):
    inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*inputs)
    out.backward(dout)
    return [t.grad for t in inputs if t is not None]


BWD_MASKS = [
    dict(),
    dict(causal=True),
    dict(causal=True, window=(13, -1), sinks=2),
    dict(window=(6, 9), softcap=4.0),
    dict(activation="sigmoid"),
    dict(activation="sigmoid", causal=True, softcap=3.0),
]


@pytest.mark.parametrize("kw", BWD_MASKS, ids=lambda kw: "-".join(f"{a}={b}" for a, b in kw.items()) or "full")
@pytest.mark.parametrize("shape", [(1, 17, 17, 2, 1, 32, 32), (2, 70, 130, 4, 2, 64, 40), (1, 130, 70, 2, 2, 80, 80),
                                   (1, 1, 90, 4, 1, 64, 64)], ids=str)
@pytest.mark.parametrize("dtype", LOWP)
def test_backward_matches_reference(isa, shape, kw, dtype):
    q, k, v = _qkv(shape, dtype)
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(3)).to(dtype)
    got = _grads(lambda a, b, c: kernkit.flash_attn(a, b, c, **kw), [q, k, v], dout)
    exact = _grads(lambda a, b, c: flash_attn_ref(a, b, c, **kw)[0], [q.double(), k.double(), v.double()],
                   dout.double())
    same = _grads(lambda a, b, c: flash_attn_ref(a, b, c, **kw)[0], [q, k, v], dout)
    for name, g, e, s in zip("qkv", got, exact, same):
        assert g.dtype == dtype
        assert_within_ref_error(g, e, s, factor=3.0, what=f"d{name}")


def _shifted_attn(q, k, v, shift, kw):
    """The internal op with an extra diagonal shift (what ring attention uses per block)."""
    from kernkit.attention import _attn_fwd, _options
    opts = _options("t", q, kw.get("causal", False), kw.get("window", (-1, -1)), kw.get("sinks", 0),
                    kw.get("softcap", 0.0), None, kw.get("activation", "softmax"), kw.get("sigmoid_bias"), False, False)
    return _attn_fwd(q, k, v, None, None, None, q.shape[1], k.shape[1], *opts, shift)


@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=(9, -1), sinks=3), dict(window=(4, 6)),
                                dict(activation="sigmoid", causal=True, sigmoid_bias=-2.0)], ids=str)
@pytest.mark.parametrize("shape", [(1, 40, 40, 2, 1, 32, 32), (2, 3, 50, 4, 1, 64, 64), (1, 70, 20, 2, 2, 16, 24)],
                         ids=str)
@pytest.mark.parametrize("shift", [-75, -30, -9, -1, 1, 13, 41, 90])
def test_diag_shift_places_the_mask(isa, shape, kw, shift):
    # shift moves the diagonal: positive = keys earlier than the queries (all visible when large)
    q, k, v = _qkv(shape, torch.float32)
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(3))
    got = _grads(lambda a, b, c: _shifted_attn(a, b, c, shift, kw)[0], [q, k, v], dout)
    out = _shifted_attn(q, k, v, shift, kw)[0]
    exact, lse_exact = flash_attn_ref(q.double(), k.double(), v.double(), diag_shift=shift, **kw)
    assert max_err(out, exact) < 1e-5
    if kw.get("activation", "softmax") == "softmax":
        lse = _shifted_attn(q, k, v, shift, kw)[1]
        assert torch.equal(torch.isfinite(lse), torch.isfinite(lse_exact))
    ref = _grads(lambda a, b, c: flash_attn_ref(a, b, c, diag_shift=shift, **kw)[0],
                 [q.double(), k.double(), v.double()], dout.double())
    for name, g, e in zip("qkv", got, ref):
        assert max_err(g, e) < 1e-4, f"d{name}"


def test_diag_shift_gradcheck_fp64():
    q, k, v = (t.requires_grad_() for t in _qkv((1, 6, 9, 2, 1, 8, 8), torch.float64))
    kw = dict(causal=True, window=(3, -1), sinks=1)
    assert torch.autograd.gradcheck(lambda a, b, c: _shifted_attn(a, b, c, -5, kw)[0], (q, k, v))
    out = _shifted_attn(q, k, v, 4, kw)[0]
    assert max_err(out, flash_attn_ref(q, k, v, diag_shift=4, **kw)[0]) < 1e-6   # the scale is passed as fp32


def test_sigmoid_bias_per_head_gradient():
    q, k, v = _qkv((2, 33, 40, 4, 2, 32, 32), torch.float32)
    bias = torch.tensor([-3.0, -1.0, 0.0, 0.5])
    dout = torch.randn(2, 33, 4, 32)
    kw = dict(activation="sigmoid", causal=True, softcap=6.0)
    got = _grads(lambda a, b, c, s: kernkit.flash_attn(a, b, c, sigmoid_bias=s, **kw), [q, k, v, bias], dout)
    exact = _grads(lambda a, b, c, s: flash_attn_ref(a, b, c, sigmoid_bias=s, **kw)[0],
                   [q.double(), k.double(), v.double(), bias.double()], dout.double())
    for g, e in zip(got, exact):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


def test_sigmoid_saturated_logits_stay_finite(isa):
    """Logits far below -88 (sigmoid ~ 0): exp(-x) must not overflow into 1 / (1 + inf) = NaN."""
    q, k, v = _qkv((1, 9, 21, 2, 2, 16, 16), torch.float32)
    q = q * 40  # |q.k| in the thousands
    dout = torch.randn(1, 9, 2, 16)
    got = _grads(lambda a, b, c: kernkit.flash_attn(a, b, c, activation="sigmoid", scale=1.0), [q, k, v], dout)
    out = kernkit.flash_attn(q, k, v, activation="sigmoid", scale=1.0)
    exact = flash_attn_ref(q.double(), k.double(), v.double(), activation="sigmoid", scale=1.0)[0]
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in got)


def test_sigmoid_default_bias_is_minus_log_keys():
    q, k, v = _qkv((1, 10, 50, 2, 2, 16, 16), torch.float32)
    a = kernkit.flash_attn(q, k, v, activation="sigmoid")
    b = kernkit.flash_attn(q, k, v, activation="sigmoid", sigmoid_bias=-math.log(50))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kw", [dict(), dict(causal=True, softcap=2.0), dict(window=(2, 1), sinks=1),
                                dict(activation="sigmoid", causal=True)], ids=str)
def test_gradcheck_fp64(kw):
    q, k, v = _qkv((2, 5, 7, 4, 2, 6, 3), torch.float64)
    args = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: kernkit.flash_attn(a, b, c, **kw), args)


def _varlen_inputs(lens_q, lens_k, H=4, Hkv=2, D=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(lens_q), H, D, generator=g).to(dtype)
    k = torch.randn(sum(lens_k), Hkv, D, generator=g).to(dtype)
    v = torch.randn(sum(lens_k), Hkv, D, generator=g).to(dtype)
    return q, k, v, cu(lens_q), cu(lens_k)


@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(causal=True, window=(5, -1), sinks=1),
                                dict(activation="sigmoid", causal=True)], ids=str)
def test_varlen_matches_per_sequence(isa, kw):
    lens_q, lens_k = [5, 0, 1, 40, 17], [9, 3, 0, 40, 70]
    q, k, v, cq, ck = _varlen_inputs(lens_q, lens_k)
    out = kernkit.flash_attn_varlen(q, k, v, cq, ck, max(lens_q), max(lens_k), **kw)
    ref, _ = flash_attn_varlen_ref(q.double(), k.double(), v.double(), cq, ck, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    dout = torch.randn_like(out)
    got = _grads(lambda a, b, c: kernkit.flash_attn_varlen(a, b, c, cq, ck, 40, 70, **kw), [q, k, v], dout)
    exp = _grads(lambda a, b, c: flash_attn_varlen_ref(a, b, c, cq, ck, **kw)[0],
                 [q.double(), k.double(), v.double()], dout.double())
    for g, e in zip(got, exp):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)
    if kw.get("activation", "softmax") == "softmax":
        _, lse = kernkit.flash_attn_varlen(q, k, v, cq, ck, 40, 70, return_lse=True, **kw)
        _, lse_ref = flash_attn_varlen_ref(q.double(), k.double(), v.double(), cq, ck, **kw)
        assert lse.shape == (4, q.shape[0])
        fin = torch.isfinite(lse_ref)
        assert torch.equal(torch.isfinite(lse), fin)
        torch.testing.assert_close(lse[fin].double(), lse_ref[fin].double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(window=(0, -1)), dict(causal=True, sinks=1)], ids=str)
def test_varlen_decode_shaped_uneven_queries(isa, kw):
    # few query rows per KV head take the decode path; sequences with different query counts and
    # several KV heads once mixed up the per-head partials (found by the hypothesis sweep)
    g = torch.Generator().manual_seed(9)
    cq, ck = torch.tensor([0, 1, 3, 3, 5], dtype=torch.int32), torch.tensor([0, 1, 2, 4, 9], dtype=torch.int32)
    q, k, v = torch.randn(5, 4, 8, generator=g), torch.randn(9, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    out = kernkit.flash_attn_varlen(q, k, v, cq, ck, 2, 5, **kw)
    ref, _ = flash_attn_varlen_ref(q.double(), k.double(), v.double(), cq, ck, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_varlen_gradcheck_fp64():
    q, k, v, cq, ck = _varlen_inputs([3, 0, 4], [2, 5, 6], H=2, Hkv=1, D=4, dtype=torch.float64)
    args = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: kernkit.flash_attn_varlen(a, b, c, cq, ck, 4, 6, causal=True),
                                    args)


@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=(30, -1), sinks=4),
                                dict(activation="sigmoid", causal=True)], ids=str)
def test_kvcache_append_and_decode(isa, sq, kw):
    B, cap, Hq, Hkv, D = 3, 200, 8, 2, 64
    g = torch.Generator().manual_seed(1)
    k_cache = torch.randn(B, cap, Hkv, D, generator=g).to(torch.bfloat16)
    v_cache = torch.randn(B, cap, Hkv, D, generator=g).to(torch.bfloat16)
    lens = torch.tensor([0, 57, 150], dtype=torch.int32)
    q = torch.randn(B, sq, Hq, D, generator=g).to(torch.bfloat16)
    k_new = torch.randn(B, sq, Hkv, D, generator=g).to(torch.bfloat16)
    v_new = torch.randn(B, sq, Hkv, D, generator=g).to(torch.bfloat16)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = kernkit.flash_attn_with_kvcache(q, k_cache, v_cache, lens, k=k_new, v=v_new, **kw)
    for b in range(B):
        n = int(lens[b])
        assert torch.equal(k_cache[b, n:n + sq], k_new[b]) and torch.equal(v_cache[b, n:n + sq], v_new[b])
        assert torch.equal(k_cache[b, :n], k_before[b, :n]) and torch.equal(k_cache[b, n + sq:], k_before[b, n + sq:])
        ref, _ = flash_attn_ref(q[b:b + 1].double(), k_cache[b:b + 1, :n + sq].double(),
                                v_cache[b:b + 1, :n + sq].double(), **kw)
        torch.testing.assert_close(out[b:b + 1].double(), ref, rtol=2e-2, atol=2e-2)


def check_kvcache_backward(device):
    # keys past cache_seqlens get zero gradients; the rest match attention over the prefix
    q, kc, vc = _qkv((2, 3, 100, 4, 2, 64, 64), torch.bfloat16)
    lens = [37, 100]
    dev = [t.to(device).detach().clone().requires_grad_() for t in (q, kc, vc)]
    out = kernkit.flash_attn_with_kvcache(*dev, torch.tensor(lens, dtype=torch.int32, device=device), causal=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out.backward(dout.to(device))
    ref = lambda a, b, c: flash_attn_ref(a, b, c, causal=True)[0]
    for b, n in enumerate(lens):
        ins = [q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n]]
        exact = _grads(ref, [t.double() for t in ins], dout[b:b + 1].double())
        same = _grads(ref, ins, dout[b:b + 1])
        for t, e, s in zip(dev, exact, same):
            assert_within_ref_error(t.grad[b:b + 1, :n].cpu(), e, s, factor=3.0)
        assert torch.all(dev[1].grad[b, n:].cpu() == 0) and torch.all(dev[2].grad[b, n:].cpu() == 0)


def test_kvcache_backward(isa):
    check_kvcache_backward("cpu")


@pytest.mark.parametrize("B", [1, 16, 17])   # up to 16 rows are appended by slices, more by one index_put
def test_kvcache_append_batch_sizes(B):
    g = torch.Generator().manual_seed(B)
    k_cache, v_cache = torch.randn(B, 12, 2, 8, generator=g), torch.randn(B, 12, 2, 8, generator=g)
    lens = torch.randint(0, 10, (B,), generator=g, dtype=torch.int32)
    q, k_new, v_new = torch.randn(B, 2, 4, 8, generator=g), torch.randn(B, 2, 2, 8, generator=g), \
        torch.randn(B, 2, 2, 8, generator=g)
    kc0, vc0 = k_cache.clone(), v_cache.clone()
    out = kernkit.flash_attn_with_kvcache(q, k_cache, v_cache, lens, k=k_new, v=v_new, causal=True)
    for b in range(B):
        n = int(lens[b])
        kc0[b, n:n + 2], vc0[b, n:n + 2] = k_new[b], v_new[b]
        ref, _ = flash_attn_ref(q[b:b + 1], kc0[b:b + 1, :n + 2], vc0[b:b + 1, :n + 2], causal=True)
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(k_cache, kc0) and torch.equal(v_cache, vc0)
    with pytest.raises(ValueError, match="capacity"):
        kernkit.flash_attn_with_kvcache(q, k_cache, v_cache, lens + 11, k=k_new, v=v_new)


@pytest.mark.parametrize("kw", [dict(), dict(causal=True, window=(700, -1), sinks=5), dict(window=(100, 0), sinks=600),
                                dict(activation="sigmoid", window=(900, -1)), dict(softcap=3.0, causal=True)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_long_cache_splits(isa, kw, dtype):
    # caches longer than one key chunk: partial results merged across chunks (fp32: rows read in
    # place, with the software prefetch of chunks past 512 KiB)
    g = torch.Generator().manual_seed(5)
    B, L, Hq, Hkv, D = 2, 1500, 8, 2, 64
    kc = torch.randn(B, L, Hkv, D, generator=g).to(dtype)
    vc = torch.randn(B, L, Hkv, D, generator=g).to(dtype)
    q = torch.randn(B, 1, Hq, D, generator=g).to(dtype)
    lens = torch.tensor([1500, 1100], dtype=torch.int32)
    out = kernkit.flash_attn_with_kvcache(q, kc, vc, lens, **kw)
    for b in range(B):
        n = int(lens[b])
        exact, _ = flash_attn_ref(q[b:b + 1].double(), kc[b:b + 1, :n].double(), vc[b:b + 1, :n].double(), **kw)
        same, _ = flash_attn_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], **kw)
        assert_within_ref_error(out[b:b + 1], exact, same)


@pytest.mark.parametrize("D", [1, 17, 40, 100, 128, 200, 256])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(9, 3), sinks=2, softcap=2.0),
                                dict(activation="sigmoid", causal=True)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_decode_head_dims(isa, D, kw, dtype):
    # the bf16 decode path takes q.k from the bf16 rows 32 elements at a time (masked tails); fp32
    # rows are read in place and scored 8/16 keys per reduction when D is a multiple of the vector
    # width (else copied and dotted one by one); 16 keys per block (a short last block points at
    # zero rows)
    g = torch.Generator().manual_seed(D)
    q = torch.randn(2, 2, 4, D, generator=g).to(dtype)
    k = torch.randn(2, 37, 2, D, generator=g).to(dtype)
    v = torch.randn(2, 37, 2, D, generator=g).to(dtype)
    out = kernkit.flash_attn(q, k, v, **kw)
    exact, _ = flash_attn_ref(q.double(), k.double(), v.double(), **kw)
    same, _ = flash_attn_ref(q, k, v, **kw)
    assert_within_ref_error(out, exact, same)


def test_kvcache_without_append():
    q, k, v = _qkv((2, 1, 4, 4, 1, 32, 32), torch.float32)
    kc = torch.randn(2, 50, 1, 32)
    vc = torch.randn(2, 50, 1, 32)
    out = kernkit.flash_attn_with_kvcache(q, kc, vc, 20)
    ref, _ = flash_attn_ref(q, kc[:, :20], vc[:, :20])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L", [200, 450])
def test_decode_short_cache_heads_split_over_threads(isa, dtype, L):
    # a cache shorter than one key chunk but large enough to start the pool: the KV heads are
    # split into groups (3 heads over 2 or 3 threads: uneven groups); every thread count gives the
    # same bits, within the reference's error, and writes every head's rows
    g = torch.Generator().manual_seed(L)
    B, Hq, Hkv, D = 1, 6, 3, 128
    kc = torch.randn(B, 512, Hkv, D, generator=g).to(dtype)
    vc = torch.randn(B, 512, Hkv, D, generator=g).to(dtype)
    q = torch.randn(B, 1, Hq, D, generator=g).to(dtype)
    before = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(kernkit.flash_attn_with_kvcache(q, kc, vc, L))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    exact, _ = flash_attn_ref(q.double(), kc[:, :L].double(), vc[:, :L].double())
    same, _ = flash_attn_ref(q, kc[:, :L], vc[:, :L])
    assert_within_ref_error(outs[1], exact, same)


def test_deterministic_across_threads():
    q, k, v = _qkv((1, 150, 150, 4, 2, 64, 64), torch.bfloat16)
    dout = torch.randn(1, 150, 4, 64).to(torch.bfloat16)
    before = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 2, 1):
            torch.set_num_threads(t)
            f = lambda a, b, c: kernkit.flash_attn(a, b, c, causal=True, window=(40, -1), deterministic=True)
            res.append([f(q, k, v)] + _grads(f, [q, k, v], dout))
    finally:
        torch.set_num_threads(before)
    for r in res[1:]:
        assert all(torch.equal(a, b) for a, b in zip(res[0], r))


def test_strided_inputs():
    # (B, H, S, D) tensors viewed as (B, S, H, D): strided but last dim contiguous
    q = torch.randn(2, 4, 33, 32).transpose(1, 2)
    k = torch.randn(2, 2, 40, 32).transpose(1, 2)
    v = torch.randn(2, 2, 40, 64)[..., ::2].transpose(1, 2)   # last dim not contiguous: copied
    out = kernkit.flash_attn(q, k, v, causal=True)
    ref, _ = flash_attn_ref(q, k, v, causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_inputs_not_modified():
    q, k, v = _qkv((1, 20, 30, 2, 1, 16, 16), torch.bfloat16)
    copies = [t.clone() for t in (q, k, v)]
    kernkit.flash_attn(q, k, v, causal=True)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_opcheck():
    from kernkit.attention import _attn_bwd, _attn_fwd

    q, k, v = _qkv((1, 20, 30, 4, 2, 16, 8), torch.float32)
    common = (None, None, None, 20, 30, 0.25, 0.0, 5, 0, 2, 0, None, 0.0, False, 0)
    torch.library.opcheck(_attn_fwd, (q, k, v) + common)
    torch.library.opcheck(_attn_fwd, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_()) + common)
    bias = torch.randn(4, requires_grad=True)
    sig = (None, None, None, 20, 30, 0.25, 3.0, -1, -1, 0, 1, bias, 0.0, False, -7)
    torch.library.opcheck(_attn_fwd, (q, k, v) + sig)
    qv, kv, vv, cq, ck = _varlen_inputs([3, 0, 9], [4, 4, 12])
    torch.library.opcheck(_attn_fwd, (qv, kv, vv, cq, ck, None, 9, 12, 0.2, 0.0, -1, 0, 0, 0, None, 0.0, False, 3))
    out, lse = _attn_fwd(q.detach(), k.detach(), v.detach(), *common)
    torch.library.opcheck(_attn_bwd, (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse)
                          + common + (False,))
    # (B, H, S, D) tensors viewed as (B, S, H, D): gradients keep the inputs' strides in the real and the
    # fake implementation alike
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out, lse = _attn_fwd(qt, kt, vt, *common)
    torch.library.opcheck(_attn_bwd, (torch.randn_like(out), qt, kt, vt, out, lse) + common + (False,))
    assert _attn_bwd(torch.randn_like(out), qt, kt, vt, out, lse, *common, False)[0].stride() == qt.stride()


def test_torch_compile_fullgraph():
    q, k, v = _qkv((1, 40, 40, 4, 2, 32, 32), torch.float32)
    args = [t.requires_grad_() for t in (q, k, v)]

    def f(a, b, c):
        return kernkit.flash_attn(a * 1.5, b, c, causal=True, window=(8, -1), sinks=2).square().sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    g1 = torch.autograd.grad(cf(*args), args)
    g2 = torch.autograd.grad(f(*args), args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    ci = torch.compile(lambda a, b, c: kernkit.flash_attn(a, b, c, activation="sigmoid") + 1, fullgraph=True)
    torch.testing.assert_close(ci(q.detach(), k.detach(), v.detach()),
                               kernkit.flash_attn(q.detach(), k.detach(), v.detach(), activation="sigmoid") + 1)


def test_meta():
    q = torch.empty(2, 10, 8, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, 12, 2, 64, device="meta", dtype=torch.bfloat16)
    out, lse = kernkit.flash_attn(q, k, k, return_lse=True)
    assert out.shape == (2, 10, 8, 64) and lse.shape == (2, 8, 10)


# --------------------------------------------------------------------------- bad input

def _ok():
    return _qkv((1, 8, 8, 4, 2, 16, 16), torch.float32)


BAD = [
    ("dtype mix", lambda q, k, v: (q, k.to(torch.bfloat16), v), {}, TypeError, "k has dtype"),
    ("int dtype", lambda q, k, v: (q.int(), k.int(), v.int()), {}, TypeError, "q has dtype int32"),
    ("3-D q", lambda q, k, v: (q[0], k, v), {}, ValueError, "q must be 4-D"),
    ("heads", lambda q, k, v: (q[:, :, :3], k, v), {}, ValueError, "multiple of k/v heads"),
    ("head dim", lambda q, k, v: (q[..., :8], k, v), {}, ValueError, "head dim"),
    ("D > 256", lambda q, k, v: (torch.randn(1, 4, 2, 300), torch.randn(1, 4, 2, 300), torch.randn(1, 4, 2, 300)),
     {}, ValueError, "head dim must be in"),
    ("batch", lambda q, k, v: (q.expand(2, -1, -1, -1), k, v), {}, ValueError, "batch mismatch"),
    ("k/v len", lambda q, k, v: (q, k, v[:, :5]), {}, ValueError, "must agree"),
    ("window < -1", lambda q, k, v: (q, k, v), dict(window=(-2, 0)), ValueError, "window"),
    ("window type", lambda q, k, v: (q, k, v), dict(window=(1.5, 0)), TypeError, "window"),
    ("window shape", lambda q, k, v: (q, k, v), dict(window=3), ValueError, "window"),
    ("sinks < 0", lambda q, k, v: (q, k, v), dict(sinks=-1), ValueError, "sinks"),
    ("softcap nan", lambda q, k, v: (q, k, v), dict(softcap=float("nan")), ValueError, "softcap"),
    ("scale inf", lambda q, k, v: (q, k, v), dict(scale=float("inf")), ValueError, "scale"),
    ("activation", lambda q, k, v: (q, k, v), dict(activation="relu"), ValueError, "activation"),
    ("bias w/o sigmoid", lambda q, k, v: (q, k, v), dict(sigmoid_bias=1.0), ValueError, "sigmoid_bias"),
    ("bias shape", lambda q, k, v: (q, k, v), dict(activation="sigmoid", sigmoid_bias=torch.zeros(3)), ValueError,
     "sigmoid_bias"),
    ("lse + sigmoid", lambda q, k, v: (q, k, v), dict(activation="sigmoid", return_lse=True), ValueError, "lse"),
    ("causal type", lambda q, k, v: (q, k, v), dict(causal="yes"), TypeError, "causal"),
]


@pytest.mark.parametrize("name, make, kw, exc, match", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(name, make, kw, exc, match):
    q, k, v = make(*_ok())
    with pytest.raises(exc, match=match):
        kernkit.flash_attn(q, k, v, **kw)


@pytest.mark.parametrize("cu_q, cu_k, exc, match", [
    (torch.tensor([0., 3., 8.]), torch.tensor([0, 4, 8], dtype=torch.int32), TypeError, "cu_seqlens_q"),
    (torch.tensor([0, 3, 8], dtype=torch.int16), torch.tensor([0, 4, 8]), TypeError, "cu_seqlens_q"),
    (torch.tensor([0, 3, 9], dtype=torch.int32), torch.tensor([0, 4, 8], dtype=torch.int32), ValueError, "end at 8"),
    (torch.tensor([0, 5, 3, 8], dtype=torch.int32), torch.tensor([0, 4, 6, 8], dtype=torch.int32), ValueError,
     "non-decreasing"),
    (torch.tensor([1, 8], dtype=torch.int32), torch.tensor([0, 8], dtype=torch.int32), ValueError, "start at 0"),
    (torch.tensor([0, 8], dtype=torch.int32), torch.tensor([0, 4, 8], dtype=torch.int32), ValueError, "same length"),
])
def test_bad_cu_seqlens(cu_q, cu_k, exc, match):
    q = torch.randn(8, 2, 16)
    with pytest.raises(exc, match=match):
        kernkit.flash_attn_varlen(q, q, q, cu_q, cu_k, 8, 8)


def test_bad_kvcache():
    q, _, _ = _qkv((2, 1, 4, 4, 1, 16, 16), torch.float32)
    kc = torch.zeros(2, 10, 1, 16)
    with pytest.raises(ValueError, match="capacity"):
        kernkit.flash_attn_with_kvcache(q, kc, kc.clone(), torch.tensor([5, 10], dtype=torch.int32),
                                        k=torch.zeros(2, 1, 1, 16), v=torch.zeros(2, 1, 1, 16))
    with pytest.raises(ValueError, match="both k and v"):
        kernkit.flash_attn_with_kvcache(q, kc, kc.clone(), 3, k=torch.zeros(2, 1, 1, 16))
    with pytest.raises(ValueError, match="shape"):
        kernkit.flash_attn_with_kvcache(q, kc, kc.clone(), torch.tensor([1, 2, 3], dtype=torch.int32))
    with pytest.raises(TypeError, match="cache_seqlens"):
        kernkit.flash_attn_with_kvcache(q, kc, kc.clone(), 2.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kvcache_decode_fast_path_equals_checked_path(dtype):
    # the plain decode call (attribute checks, one native append) against the fully checked path
    # (taken when any other option is given, here the default window), outputs and caches bitwise
    from kernkit.attention import _kvcache_fast

    g = torch.Generator().manual_seed(3)
    B, cap, Hq, Hkv, D = 3, 50, 8, 2, 32
    for n_new, causal in ((0, False), (1, True), (3, True), (2, False)):
        q = torch.randn(B, n_new or 1, Hq, D, generator=g).to(dtype)
        caches = [torch.randn(B, cap, Hkv, D, generator=g).to(dtype) for _ in range(2)]
        k = torch.randn(B, n_new, Hkv, D, generator=g).to(dtype) if n_new else None
        v = torch.randn(B, n_new, Hkv, D, generator=g).to(dtype) if n_new else None
        lens = torch.tensor([0, 17, 40], dtype=torch.int32)
        kc1, vc1 = (c.clone() for c in caches)
        kc2, vc2 = (c.clone() for c in caches)
        fast = _kvcache_fast(q, kc1, vc1, lens, k, v, {"causal": causal})
        assert fast is not None
        slow = kernkit.flash_attn_with_kvcache(q, kc2, vc2, lens, k=k, v=v, causal=causal, window=(-1, -1))
        assert torch.equal(fast, slow) and torch.equal(kc1, kc2) and torch.equal(vc1, vc2)
        assert lens.tolist() == [0, 17, 40]  # not mutated
    # what the fast path leaves to the checked one: a full cache raises there
    full = torch.tensor([cap, 0, 0], dtype=torch.int32)
    one = torch.randn(B, 1, Hkv, D).to(dtype)
    assert _kvcache_fast(q[:, :1], kc1, vc1, full, one, one, {}) is None
    with pytest.raises(ValueError, match="capacity"):
        kernkit.flash_attn_with_kvcache(q[:, :1], kc1, vc1, full, k=one, v=one)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kvcache_decode_fast_path_int_lengths_and_layouts(dtype):
    # an int cache_seqlens, a head-major (permuted) q, strided caches and new keys: the fast path
    # takes them and matches the checked path bitwise, layout included (contiguous)
    from kernkit.attention import _kvcache_fast

    g = torch.Generator().manual_seed(5)
    B, cap, Hq, Hkv, D = 2, 40, 4, 2, 64
    q = torch.randn(B, Hq, 1, D, generator=g).to(dtype).transpose(1, 2)     # (B, 1, Hq, D), head-major
    base = [torch.randn(B, cap, Hkv, 2 * D, generator=g).to(dtype) for _ in range(2)]
    k = torch.randn(B, 2, Hkv, D + 8, generator=g).to(dtype)[..., :D]       # strided rows
    v = torch.randn(B, 2, Hkv, D, generator=g).to(dtype)
    for start in (0, 13, cap - 2):
        kc1, vc1 = (c.clone()[..., :D] for c in base)
        kc2, vc2 = (c.clone()[..., :D] for c in base)
        fast = _kvcache_fast(q, kc1, vc1, start, k, v, {"causal": True})
        assert fast is not None
        slow = kernkit.flash_attn_with_kvcache(q, kc2, vc2, start, k=k, v=v, causal=True, window=(-1, -1))
        assert torch.equal(fast, slow) and torch.equal(kc1, kc2) and torch.equal(vc1, vc2)
        assert fast.is_contiguous() and slow.is_contiguous()
        ref_k = torch.cat([base[0][:, :start, :, :D], k], 1)
        ref_v = torch.cat([base[1][:, :start, :, :D], v], 1)
        heads = [t.transpose(1, 2).float() for t in (q, ref_k, ref_v)]   # 1 query row at the end: all keys
        want = torch.nn.functional.scaled_dot_product_attention(*heads, enable_gqa=True).transpose(1, 2)
        torch.testing.assert_close(fast.float(), want, atol=2e-2 if dtype == torch.float16 else 1e-5, rtol=0)
    # an int past the capacity, a bool, a negative int: left to the checked path, which raises
    kc, vc = (c.clone()[..., :D] for c in base)
    for bad in (cap, -1, True):
        assert _kvcache_fast(q, kc, vc, bad, k[:, :1], v[:, :1], {}) is None
    with pytest.raises(ValueError, match="capacity"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, cap, k=k[:, :1], v=v[:, :1])
    with pytest.raises(ValueError, match="capacity"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, -1)
    with pytest.raises(TypeError, match="cache_seqlens"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, True)
    assert torch.equal(kc, base[0][..., :D]) and torch.equal(vc, base[1][..., :D])  # nothing written


def test_kvcache_fast_path_leaves_leaked_functorch_wrappers_to_the_checked_path():
    # a tensor leaked out of torch.func.grad has no storage: the lean path must not be the one to fail
    from kernkit.attention import _kvcache_fast

    leaked = []

    def f(x):
        leaked.append(x)
        return (x * x).sum()

    torch.func.grad(f)(torch.randn(1, 1, 2, 8))
    kc, vc = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
    assert _kvcache_fast(leaked[0], kc, vc, 3, None, None, {}) is None
