import pytest
import torch

import kernkit
from kernkit.reference import causal_conv1d_ref, linear_scan_ref
from helpers import assert_within_ref_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grads(fn, inputs, dout):
    inputs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    douts = dout if isinstance(dout, tuple) else (dout,)
    torch.autograd.backward(outs, douts)
    return [None if t is None else t.grad for t in inputs]


# --------------------------------------------------------------------------- linear_scan

SCAN_SHAPES = [  # (b shape, a shape)
    ((1, 1, 1), (1, 1, 1)),
    ((2, 17, 5), (2, 17, 5)),
    ((3, 255, 40), (3, 255, 40)),
    ((1, 3000, 7), (1, 3000, 7)),        # long T, few channels: time-chunked path
    ((2, 59, 4, 33), (1, 59, 1, 33)),     # broadcast a over batch and a middle dim
    ((2, 100, 70), (2, 100, 1)),          # scalar gate per step
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shapes", SCAN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_scan_matches_reference(isa, shapes, dtype, reverse):
    bs, as_ = shapes
    g = _gen()
    a = (torch.rand(as_, generator=g, dtype=torch.float64) * 0.3 + 0.7).to(dtype)
    b = torch.randn(bs, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn((bs[0],) + bs[2:], generator=g, dtype=torch.float64).to(dtype)
    h = kernkit.linear_scan(a, b, h0, reverse=reverse)
    exact = linear_scan_ref(a.double(), b.double(), h0.double(), reverse=reverse)
    same = linear_scan_ref(a, b, h0, reverse=reverse)
    assert h.dtype == dtype and h.shape == exact.shape
    assert_within_ref_error(h, exact, same)
    dh = torch.randn(bs, generator=g).to(dtype)
    got = _grads(lambda x, y, z: kernkit.linear_scan(x, y, z, reverse=reverse), [a, b, h0], dh)
    ex = _grads(lambda x, y, z: linear_scan_ref(x, y, z, reverse=reverse), [a.double(), b.double(), h0.double()],
                dh.double())
    sm = _grads(lambda x, y, z: linear_scan_ref(x, y, z, reverse=reverse), [a, b, h0], dh)
    for name, gg, e, s in zip(("da", "db", "dh0"), got, ex, sm):
        assert gg.shape == e.shape
        assert_within_ref_error(gg, e, s, factor=3.0, what=name)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_gradcheck(reverse):
    g = _gen(1)
    a = (torch.rand(2, 9, 3, generator=g, dtype=torch.float64) * 0.9).requires_grad_()
    b = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a1 = (torch.rand(1, 9, 1, generator=g, dtype=torch.float64) * 0.9).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, z: kernkit.linear_scan(x, y, z, reverse=reverse), (a, b, h0))
    assert torch.autograd.gradcheck(lambda x, y: kernkit.linear_scan(x, y, reverse=reverse), (a1, b))


def test_linear_scan_split_equals_whole():
    g = _gen(2)
    a = torch.rand(2, 500, 16, generator=g)
    b = torch.randn(2, 500, 16, generator=g)
    whole = kernkit.linear_scan(a, b)
    first = kernkit.linear_scan(a[:, :200], b[:, :200])
    second = kernkit.linear_scan(a[:, 200:], b[:, 200:], first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_linear_scan_strong_decay_and_growth_stay_finite():
    a = torch.zeros(1, 4000, 8)
    b = torch.randn(1, 4000, 8)
    torch.testing.assert_close(kernkit.linear_scan(a, b), b)
    a = torch.full((1, 4000, 8), 1.0)
    h = kernkit.linear_scan(a, torch.ones(1, 4000, 8))
    torch.testing.assert_close(h[0, :, 0], torch.arange(1, 4001, dtype=torch.float32))


def test_linear_scan_deterministic_across_threads():
    g = _gen(3)
    a, b = torch.rand(1, 8192, 4, generator=g), torch.randn(1, 8192, 4, generator=g)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(kernkit.linear_scan(a, b))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_linear_scan_opcheck_and_compile():
    from kernkit.scan import _linear_scan_op

    g = _gen(4)
    a, b = torch.rand(2, 30, 5, generator=g), torch.randn(2, 30, 5, generator=g)
    h0 = torch.randn(2, 5, generator=g)
    torch.library.opcheck(_linear_scan_op, (a, b, h0, False))
    torch.library.opcheck(_linear_scan_op, (a.requires_grad_(), b.requires_grad_(), h0.requires_grad_(), True))
    f = torch.compile(lambda x, y: kernkit.linear_scan(x.sigmoid(), y).sum(), fullgraph=True, backend="aot_eager")
    x, y = torch.randn(2, 30, 5, requires_grad=True), torch.randn(2, 30, 5, requires_grad=True)
    gx = torch.autograd.grad(f(x, y), (x, y))
    ex = torch.autograd.grad(linear_scan_ref(x.sigmoid(), y).sum(), (x, y))
    for p, q in zip(gx, ex):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4).double(), None), TypeError, "same dtype"),
    (lambda: (torch.rand(2, 3, 4), torch.rand(2, 5, 4), None), ValueError, "broadcastable"),
    (lambda: (torch.rand(3), torch.rand(3), None), ValueError, "at least 2 dims"),
    (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(2, 3)), ValueError, "initial_state"),
    (lambda: (torch.rand(2, 3, 4).int(), torch.rand(2, 3, 4).int(), None), TypeError, "dtype"),
])
def test_linear_scan_bad_inputs(make, exc, match):
    a, b, h0 = make()
    with pytest.raises(exc, match=match):
        kernkit.linear_scan(a, b, h0)


# --------------------------------------------------------------------------- causal_conv1d

@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("L", [1, 2, 17, 255, 2048])
@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_conv1d_matches_reference(isa, dtype, L, W, act):
    g = _gen(5)
    B, D = 2, 6
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
    x, w, bias, init = mk(B, D, L), mk(D, W), mk(D), mk(B, D, W - 1)
    kw = dict(activation=act, return_final_state=True)
    y, f = kernkit.causal_conv1d(x, w, bias, initial_state=init, **kw)
    ye, fe = causal_conv1d_ref(x.double(), w.double(), bias.double(), initial_state=init.double(), **kw)
    ys, _ = causal_conv1d_ref(x, w, bias, initial_state=init, **kw)
    assert_within_ref_error(y, ye, ys)
    assert torch.equal(f, fe.to(dtype))
    dy, df = mk(B, D, L), mk(B, D, W - 1)
    fn = lambda a, b_, c, d: kernkit.causal_conv1d(a, b_, c, initial_state=d, **kw)
    rf = lambda a, b_, c, d: causal_conv1d_ref(a, b_, c, initial_state=d, **kw)
    got = _grads(fn, [x, w, bias, init], (dy, df))
    ex = _grads(rf, [x.double(), w.double(), bias.double(), init.double()], (dy.double(), df.double()))
    sm = _grads(rf, [x, w, bias, init], (dy, df))
    for name, gg, e, s in zip(("dx", "dw", "dbias", "dinit"), got, ex, sm):
        assert_within_ref_error(gg, e, s, factor=3.0, what=name)


def test_causal_conv1d_defaults_and_streaming():
    g = _gen(6)
    x, w = torch.randn(2, 4, 50, generator=g), torch.randn(4, 4, generator=g)
    y = kernkit.causal_conv1d(x, w)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, causal_conv1d_ref(x, w))
    # chunked streaming with states equals the whole sequence
    y1, s1 = kernkit.causal_conv1d(x[..., :20], w, activation="silu", return_final_state=True)
    y2 = kernkit.causal_conv1d(x[..., 20:], w, activation="silu", initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), kernkit.causal_conv1d(x, w, activation="silu"))


def test_causal_conv1d_gradcheck():
    g = _gen(7)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    args = (mk(2, 3, 11), mk(3, 4), mk(3), mk(2, 3, 3))
    assert torch.autograd.gradcheck(
        lambda x, w, b, i: kernkit.causal_conv1d(x, w, b, activation="silu", initial_state=i,
                                                 return_final_state=True), args)
    assert torch.autograd.gradcheck(lambda x, w: kernkit.causal_conv1d(x, w), args[:2])


def test_causal_conv1d_opcheck_compile_determinism():
    from kernkit.scan import _conv_op

    g = _gen(8)
    x, w, b, i = (torch.randn(*s, generator=g) for s in [(2, 8, 40), (8, 4), (8,), (2, 8, 3)])
    torch.library.opcheck(_conv_op, (x, w, b, i, True, True))
    torch.library.opcheck(_conv_op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), None, False, False))
    f = torch.compile(lambda a, c: kernkit.causal_conv1d(a, c, activation="silu").sum(), fullgraph=True,
                      backend="aot_eager")
    ga = torch.autograd.grad(f(x, w), (x, w))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gb = torch.autograd.grad(kernkit.causal_conv1d(x, w, activation="silu").sum(), (x, w))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(p, q) for p, q in zip(ga, gb))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: (torch.randn(2, 4, 9), torch.randn(5, 3), None, {}), ValueError, "weight must be"),
    (lambda: (torch.randn(4, 9), torch.randn(4, 3), None, {}), ValueError, "x must be"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3).double(), None, {}), TypeError, "weight dtype"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), torch.randn(3), {}), ValueError, "bias"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(activation="relu")), ValueError, "activation"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(initial_state=torch.randn(2, 4, 3))), ValueError,
     "initial_state"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 0), None, {}), ValueError, "width"),
])
def test_causal_conv1d_bad_inputs(make, exc, match):
    x, w, b, kw = make()
    with pytest.raises(exc, match=match):
        kernkit.causal_conv1d(x, w, b, **kw)
