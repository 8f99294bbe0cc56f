import pytest
import torch
import torch.nn.functional as F

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
    ((1, 9, 2100), (1, 9, 2100)),         # wide rows: several wide tasks, a ragged last one
    ((3, 20, 1030), (1, 20, 1030)),
]


def _check_linear_scan(bs, as_, dtype, reverse, device="cpu"):
    g = _gen()
    a = (torch.rand(as_, generator=g, dtype=torch.float64) * 0.3 + 0.7).to(dtype).to(device)
    b = torch.randn(bs, generator=g, dtype=torch.float64).to(dtype).to(device)
    h0 = torch.randn((bs[0],) + bs[2:], generator=g, dtype=torch.float64).to(dtype).to(device)
    h = kernkit.linear_scan(a, b, h0, reverse=reverse)
    exact = linear_scan_ref(a.double(), b.double(), h0.double(), reverse=reverse)
    same = linear_scan_ref(a, b, h0, reverse=reverse)
    assert h.dtype == dtype and h.shape == exact.shape
    assert_within_ref_error(h, exact, same)
    dh = torch.randn(bs, generator=g).to(dtype).to(device)
    got = _grads(lambda x, y, z: kernkit.linear_scan(x, y, z, reverse=reverse), [a, b, h0], dh)
    ex = _grads(lambda x, y, z: linear_scan_ref(x, y, z, reverse=reverse), [a.double(), b.double(), h0.double()],
                dh.double())
    sm = _grads(lambda x, y, z: linear_scan_ref(x, y, z, reverse=reverse), [a, b, h0], dh)
    for name, gg, e, s in zip(("da", "db", "dh0"), got, ex, sm):
        assert gg.shape == e.shape
        assert_within_ref_error(gg, e, s, factor=3.0, what=name)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shapes", SCAN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_scan_matches_reference(isa, shapes, dtype, reverse):
    _check_linear_scan(*shapes, dtype, reverse)


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


@pytest.mark.parametrize("C", [1024, 1030])  # 1030: rows not 64-byte aligned, regular stores
def test_linear_scan_streaming_stores(isa, C):
    # outputs of >= 64 MiB are written with non-temporal stores (fp32)
    g = _gen(C)
    T = (64 << 20) // (4 * 2 * C) + 3
    a, b = torch.rand(2, T, C, generator=g) * 0.1 + 0.9, torch.randn(2, T, C, generator=g)
    h0 = torch.randn(2, C, generator=g)
    h = kernkit.linear_scan(a, b, h0)
    ref = linear_scan_ref(a, b, h0)
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-5)


def test_linear_scan_deterministic_across_threads():
    g = _gen(3)
    for shape in ((1, 8192, 4), (1, 50, 1000), (2, 30, 5000)):  # time-chunked; wide tasks of thread-dependent width
        a, b = torch.rand(*shape, generator=g), torch.randn(*shape, generator=g)
        before = torch.get_num_threads()
        try:
            outs = []
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                outs.append(kernkit.linear_scan(a, b))
        finally:
            torch.set_num_threads(before)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


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

def _check_conv(dtype, L, W, act, device="cpu"):
    g = _gen(5)
    B, D = 2, 6
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).to(device)
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
    again = _grads(fn, [x, w, bias, init], (dy, df))
    assert all(torch.equal(p, q) for p, q in zip(got, again))  # deterministic


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("W", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("L", [1, 2, 17, 255, 2048])
@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_conv1d_matches_reference(isa, dtype, L, W, act):
    _check_conv(dtype, L, W, act)


def _check_conv_mixed(dtype, act, device, L=77, W=4):
    """16-bit x with fp32 weight and bias (Mamba under autocast): y in x's dtype, fp32 weight grads."""
    g = _gen(11)
    B, D = 2, 5
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x, init, dy = (mk(*s).to(dtype).to(device) for s in ((B, D, L), (B, D, W - 1), (B, D, L)))
    w, bias = mk(D, W).float().to(device), mk(D).float().to(device)
    kw = dict(activation=act)
    y = kernkit.causal_conv1d(x, w, bias, initial_state=init, **kw)
    assert y.dtype == dtype
    ye = causal_conv1d_ref(x.double(), w.double(), bias.double(), initial_state=init.double(), **kw)
    ys = causal_conv1d_ref(x, w, bias, initial_state=init, **kw)  # fp32 sums, as causal-conv1d
    assert_within_ref_error(y, ye, ys)
    fn = lambda a, b_, c, d: kernkit.causal_conv1d(a, b_, c, initial_state=d, **kw)
    rf = lambda a, b_, c, d: causal_conv1d_ref(a, b_, c, initial_state=d, **kw)
    got = _grads(fn, [x, w, bias, init], dy)
    ex = _grads(rf, [x.double(), w.double(), bias.double(), init.double()], dy.double())
    sm = _grads(rf, [x, w, bias, init], dy)
    assert got[1].dtype == got[2].dtype == torch.float32 and got[0].dtype == got[3].dtype == dtype
    for name, gg, e, s in zip(("dx", "dw", "dbias", "dinit"), got, ex, sm):
        assert_within_ref_error(gg, e, s, factor=3.0, what=name)
    for gg, e in zip(got[1:3], ex[1:3]):  # causal-conv1d's weight-gradient tolerance
        torch.testing.assert_close(gg.double(), e, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_conv1d_fp32_weights(isa, dtype, act):
    _check_conv_mixed(dtype, act, "cpu")


def _seq_idx(B, L, device):
    rows = [[0] * 20 + [1] * 25 + [2] * (L - 45), [7] * L, [0] * 3 + [1] * (L - 3)][:B]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _check_conv_seq(dtype, act, device, W=4, L=60, wide=False):
    """Packed sequences: a position feeds an output only within the same sequence index."""
    g = _gen(12)
    B, D = 3, 4
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x, dy = (mk(B, D, L).to(dtype).to(device) for _ in range(2))
    wd = torch.float32 if wide else dtype
    w, bias = mk(D, W).to(wd).to(device), mk(D).to(wd).to(device)
    seq = _seq_idx(B, L, device)
    y = kernkit.causal_conv1d(x, w, bias, activation=act, seq_idx=seq)
    ye = causal_conv1d_ref(x.double(), w.double(), bias.double(), activation=act, seq_idx=seq)
    ys = causal_conv1d_ref(x, w, bias, activation=act, seq_idx=seq)
    assert_within_ref_error(y, ye, ys)
    # each packed sequence equals that sequence convolved on its own
    alone = kernkit.causal_conv1d(x[:1, :, 20:45].contiguous(), w, bias, activation=act)
    torch.testing.assert_close(y[:1, :, 20:45], alone)
    fn = lambda a, b_, c: kernkit.causal_conv1d(a, b_, c, activation=act, seq_idx=seq)
    rf = lambda a, b_, c: causal_conv1d_ref(a, b_, c, activation=act, seq_idx=seq)
    got = _grads(fn, [x, w, bias], dy)
    ex = _grads(rf, [x.double(), w.double(), bias.double()], dy.double())
    sm = _grads(rf, [x, w, bias], dy)
    for name, gg, e, s in zip(("dx", "dw", "dbias"), got, ex, sm):
        assert_within_ref_error(gg, e, s, factor=3.0, what=name)
    assert seq.dtype == torch.int32  # unchanged


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_causal_conv1d_seq_idx(isa, dtype, act):
    _check_conv_seq(dtype, act, "cpu")
    if dtype in (torch.bfloat16, torch.float16):
        _check_conv_seq(dtype, act, "cpu", W=3, wide=True)


def test_causal_conv1d_seq_idx_gradcheck_and_int64():
    g = _gen(13)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]])
    args = (mk(1, 3, 11), mk(3, 4), mk(3))
    assert torch.autograd.gradcheck(lambda x, w, b: kernkit.causal_conv1d(x, w, b, activation="silu", seq_idx=seq),
                                    args)
    y64 = kernkit.causal_conv1d(*args, seq_idx=seq)
    y32 = kernkit.causal_conv1d(*args, seq_idx=seq.int())
    assert torch.equal(y64, y32) and seq.dtype == torch.int64


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
    torch.library.opcheck(_conv_op, (x, w, b, i, None, True, True))
    torch.library.opcheck(_conv_op, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), None, None, False,
                                     False))
    seq = torch.tensor([[0] * 15 + [1] * 25, [3] * 40], dtype=torch.int32)
    torch.library.opcheck(_conv_op, (x, w.float(), b.float(), None, seq, True, False))
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
    (lambda: (torch.randn(2, 4, 9).double(), torch.randn(4, 3), None, {}), TypeError, "weight dtype"),
    (lambda: (torch.randn(2, 4, 9).half(), torch.randn(4, 3).bfloat16(), None, {}), TypeError, "weight dtype"),
    (lambda: (torch.randn(2, 4, 9).half(), torch.randn(4, 3), torch.randn(4).half(), {}), TypeError, "bias dtype"),
    (lambda: (torch.randn(2, 4, 9).half(), torch.randn(4, 3), None, dict(initial_state=torch.randn(2, 4, 2))),
     TypeError, "initial_state dtype"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(seq_idx=torch.zeros(2, 8, dtype=torch.int32))),
     ValueError, "seq_idx must have shape"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(seq_idx=torch.zeros(2, 9))), TypeError, "seq_idx"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(seq_idx=torch.zeros(2, 9, dtype=torch.int32),
                                                                  initial_state=torch.randn(2, 4, 2))),
     ValueError, "seq_idx cannot be combined"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(seq_idx=torch.zeros(2, 9, dtype=torch.int32),
                                                                  return_final_state=True)),
     ValueError, "seq_idx cannot be combined"),
    (lambda: (torch.randn(2, 4, 9), torch.randn(4, 3), None, dict(seq_idx=torch.full((2, 9), 2**40))),
     ValueError, "fit in int32"),
])
def test_causal_conv1d_bad_inputs(make, exc, match):
    x, w, b, kw = make()
    with pytest.raises(exc, match=match):
        kernkit.causal_conv1d(x, w, b, **kw)


# --------------------------------------------------------------------------- causal_conv1d_update

def _check_conv_update(dtype, W, S, L_new, act, device="cpu", wide=False, B=2, D=37, steps=3, cuda_kernels=False):
    """Several update calls against the fp64 reference (the anchor error rule), the state bitwise equal to the
    reference's, and the whole stream equal to one causal_conv1d call over [state | all new inputs]."""
    from kernkit.reference import causal_conv1d_update_ref

    g = _gen(11)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    wdt = torch.float32 if wide else dtype
    w, bias, state0 = mk(D, W), mk(D), mk(B, D, S)
    xs = [mk(B, D, L_new) for _ in range(steps)]
    st_k, st_e, st_s = state0.to(dtype).to(device).clone(), state0.clone(), state0.to(dtype).clone()
    ys = []
    for x in xs:
        x1 = x[..., 0] if L_new == 1 else x  # (B, D) for one token
        xin = x1.to(dtype).to(device)
        with torch.no_grad():
            y = kernkit.causal_conv1d_update(xin, st_k, w.to(wdt).to(device), bias.to(wdt).to(device), activation=act)
        ye = causal_conv1d_update_ref(x1.to(dtype).double(), st_e, w.to(wdt).double(), bias.to(wdt).double(),
                                      activation=act)
        yr = causal_conv1d_update_ref(x1.to(dtype), st_s, w.to(wdt), bias.to(wdt), activation=act)
        assert y.shape == x1.shape and y.dtype == dtype
        assert_within_ref_error(y.cpu(), ye, yr)
        assert torch.equal(st_k.cpu(), st_e.to(dtype)), "the state is the last S inputs, copied exactly"
        ys.append(y.cpu().reshape(B, D, L_new))
    # equal to one causal_conv1d call (the same kernel arithmetic on CPU) over the whole stream
    whole = torch.cat([x.to(dtype) for x in xs], -1)
    init = state0.to(dtype)[..., S - (W - 1):] if W > 1 else None
    yw = kernkit.causal_conv1d(whole, w.to(wdt), bias.to(wdt), activation=act, initial_state=init)
    if not cuda_kernels:  # the CPU update runs causal_conv1d's own row kernel: bitwise the same
        assert torch.equal(torch.cat(ys, -1), yw.cpu())
    else:
        assert_within_ref_error(torch.cat(ys, -1), causal_conv1d_ref(whole.double(), w.to(wdt).double(),
                                                                      bias.to(wdt).double(), activation=act,
                                                                      initial_state=None if init is None else
                                                                      init.double()), yw)


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("W, S, L_new", [(4, 3, 1), (4, 4, 1), (4, 4, 3), (4, 6, 9), (2, 1, 1), (1, 0, 2), (7, 6, 17)])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_causal_conv1d_update_matches_reference(isa, dtype, W, S, L_new, act):
    _check_conv_update(dtype, W, S, L_new, act)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_conv1d_update_fp32_weights(dtype):
    _check_conv_update(dtype, 4, 4, 1, "silu", wide=True)


def test_causal_conv1d_update_prefill_then_decode_equals_one_call():
    g = _gen(12)
    x, w, b = torch.randn(2, 24, 40, generator=g), torch.randn(24, 4, generator=g), torch.randn(24, generator=g)
    y_pre, state = kernkit.causal_conv1d(x[..., :30], w, b, activation="silu", return_final_state=True)
    ys = [kernkit.causal_conv1d_update(x[..., t], state, w, b, activation="silu") for t in range(30, 40)]
    whole = kernkit.causal_conv1d(x, w, b, activation="silu")
    assert torch.equal(torch.cat([y_pre, torch.stack(ys, -1)], -1), whole)


def test_causal_conv1d_update_compile_and_opcheck():
    from kernkit.scan import _conv_update_op

    g = _gen(13)
    x, w, b, s = (torch.randn(*sh, generator=g) for sh in [(2, 8, 1), (8, 4), (8,), (2, 8, 4)])
    torch.library.opcheck(_conv_update_op, (x, s.clone(), w, b, True))
    s1, s2 = s.clone(), s.clone()
    f = torch.compile(lambda a, st: kernkit.causal_conv1d_update(a, st, w, b, activation="silu"), fullgraph=True,
                      backend="aot_eager")
    y1 = f(x[..., 0], s1)
    y2 = kernkit.causal_conv1d_update(x[..., 0], s2, w, b, activation="silu")
    assert torch.equal(y1, y2) and torch.equal(s1, s2)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 2), torch.randn(4, 4), {}), ValueError, "conv_state must be"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 5, 3), torch.randn(4, 4), {}), ValueError, "conv_state must be"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 3).double(), torch.randn(4, 4), {}), TypeError, "conv_state dtype"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 6)[..., :3], torch.randn(4, 4), {}), ValueError, "contiguous"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 3), torch.randn(5, 4), {}), ValueError, "weight must be"),
    (lambda: (torch.randn(2), torch.randn(2, 4, 3), torch.randn(4, 4), {}), ValueError, "x must be"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 3), torch.randn(4, 4).double(), {}), TypeError, "weight dtype"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 3), torch.randn(4, 4), dict(bias=torch.randn(3))), ValueError,
     "bias must have shape"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 4, 3), torch.randn(4, 4), dict(activation="gelu")), ValueError,
     "activation"),
    (lambda: (torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, 3), torch.randn(4, 4), {}), RuntimeError,
     "not differentiable"),
])
def test_causal_conv1d_update_bad_inputs(make, exc, match):
    x, s, w, kw = make()
    before = s.clone()
    with pytest.raises(exc, match=match):
        kernkit.causal_conv1d_update(x, s, w, **kw)
    assert torch.equal(s, before), "a rejected call must not touch the state"


# --------------------------------------------------------------------------- selective_scan

from kernkit.reference import selective_scan_ref  # noqa: E402

# mamba-ssm's test tolerances
SS_TOL = {torch.float32: (6e-4, 2e-3), torch.bfloat16: (3e-2, 5e-2), torch.float16: (3e-3, 5e-3)}


def _ss_inputs(Bsz, Dm, N, L, bc, dtype, seed=0):
    g = _gen(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale)
    u = mk(Bsz, Dm, L).to(dtype)
    delta = (torch.rand(Bsz, Dm, L, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    A = -(torch.rand(Dm, N, generator=g, dtype=torch.float64) * 2 + 0.1).float()
    if bc == "invariant":
        B, C = mk(Dm, N).float(), mk(Dm, N).float()
    elif bc == "variable":
        B, C = mk(Bsz, N, L).to(dtype), mk(Bsz, N, L).to(dtype)
    else:  # grouped
        B, C = mk(Bsz, 2, N, L).to(dtype), mk(Bsz, 2, N, L).to(dtype)
    extra = dict(D=mk(Dm).float(), z=mk(Bsz, Dm, L).to(dtype), delta_bias=mk(Dm, scale=0.1).float(),
                 initial_state=mk(Bsz, Dm, N).float())
    return [u, delta, A, B, C], extra


OPTIONS = [
    dict(),
    dict(delta_softplus=True),
    dict(D=True, z=True),
    dict(D=True, z=True, delta_bias=True, delta_softplus=True, initial_state=True),
]


def _pick(extra, opts):
    return {k: (extra[k] if v is True and k in extra else v) for k, v in opts.items()}


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("bc", ["invariant", "variable", "grouped"])
@pytest.mark.parametrize("L", [1, 2, 17, 255, 2048])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_matches_reference(isa, dtype, L, bc, opts):
    base, extra = _ss_inputs(2, 4, 16, L, bc, dtype)
    kw = _pick(extra, opts)
    out, last = kernkit.selective_scan(*base, return_last_state=True, **kw)
    exact, last_exact = selective_scan_ref(*[t.double() for t in base], return_last_state=True,
                                           **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    rtol, atol = SS_TOL[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=rtol, atol=atol)
    torch.testing.assert_close(last.double(), last_exact, rtol=rtol, atol=atol)


@pytest.mark.parametrize("opts", OPTIONS[2:], ids=lambda o: "-".join(o))
@pytest.mark.parametrize("bc", ["invariant", "variable", "grouped"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_backward_matches_reference(isa, dtype, bc, opts):
    L = 300 if isa == "avx512" else 70  # crosses the 256-step checkpoint interval at avx512
    base, extra = _ss_inputs(2, 4, 16, L, bc, dtype, seed=1)
    kw = _pick(extra, opts)
    names = ["u", "delta", "A", "B", "C"] + list(k for k in kw if torch.is_tensor(kw[k]))
    flags = {k: v for k, v in kw.items() if not torch.is_tensor(v)}
    tensors = base + [kw[k] for k in names[5:]]
    dout = torch.randn(base[0].shape, generator=_gen(9)).to(dtype)

    def run(fn, ts):
        return fn(*ts[:5], **dict(zip(names[5:], ts[5:])), **flags)

    got = _grads(lambda *ts: run(kernkit.selective_scan, list(ts)), tensors, dout)
    exp = _grads(lambda *ts: run(selective_scan_ref, list(ts)), [t.double() for t in tensors], dout.double())
    rtol, atol = SS_TOL[dtype]
    for name, gg, e in zip(names, got, exp):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(gg.double(), e, rtol=rtol * 3, atol=atol * 3 * scale, msg=f"d{name}")


def test_silu_and_softplus_edge_values(isa):
    """SiLU (causal_conv1d) and the softplus of delta (selective_scan) at +-inf, NaN and far from 0 agree
    with torch: NaN where torch gives NaN, exact 0 / x where the value under- or overflows."""
    x = torch.tensor([float("-inf"), -1e4, -100.0, -30.0, -5.0, 0.0, 3.0, 30.0, 1e4, float("inf"), float("nan")])
    got = kernkit.causal_conv1d(x[None, None].repeat(1, 2, 1), torch.ones(2, 1), activation="silu")[0, 0]
    torch.testing.assert_close(got, F.silu(x), equal_nan=True, rtol=1e-6, atol=1e-30)  # (denormals)
    # dt = softplus(delta) enters the output as dt * u * B * C with x0 = 0, L = 1, A irrelevant
    # (delta = +inf is left out: dt = inf times the zero padding of B's unused state lanes is NaN)
    x = x[x != float("inf")]
    L = x.numel()
    d = x[None, None].clone()
    out = torch.stack([kernkit.selective_scan(torch.ones(1, 1, 1), d[..., i:i + 1], -torch.ones(1, 1),
                                              torch.ones(1, 1, 1), torch.ones(1, 1, 1), delta_softplus=True)[0, 0, 0]
                       for i in range(L)])
    torch.testing.assert_close(out, F.softplus(x), equal_nan=True, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("N", [1, 2, 9])
def test_selective_scan_backward_state_sizes(isa, N):
    """State sizes around the vector widths (one or two vectors of state, scalar lanes, padding)."""
    base, extra = _ss_inputs(2, 3, N, 300, "variable", torch.float32, seed=6)
    kw = dict(D=extra["D"], delta_bias=extra["delta_bias"], delta_softplus=True)
    tensors = base + [extra["z"], extra["initial_state"]]
    dout = torch.randn(base[0].shape, generator=_gen(11))

    def run(fn, ts, cast=lambda t: t):
        return fn(*ts[:5], z=ts[5], initial_state=ts[6], **{k: cast(v) if torch.is_tensor(v) else v
                                                            for k, v in kw.items()})

    got = _grads(lambda *ts: run(kernkit.selective_scan, ts), tensors, dout)
    exp = _grads(lambda *ts: run(selective_scan_ref, ts, lambda t: t.double()), [t.double() for t in tensors],
                 dout.double())
    for name, gg, e in zip(["u", "delta", "A", "B", "C", "z", "h0"], got, exp):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(gg.double(), e, rtol=2e-3, atol=2e-3 * scale, msg=f"d{name}")


@pytest.mark.parametrize("N", [5, 16])
def test_selective_scan_backward_long_sequence(isa, N):
    """L = 4100 crosses the backward's recompute chunk (2048 or 4096 steps) at every ISA, not at a multiple
    of the vector width; gradients through the carried last state too."""
    base, extra = _ss_inputs(1, 2, N, 4100, "variable", torch.float32, seed=5)
    kw = dict(D=extra["D"], z=extra["z"], delta_bias=extra["delta_bias"], initial_state=extra["initial_state"],
              delta_softplus=True, return_last_state=True)
    tensors = base + [kw["z"], kw["initial_state"]]
    g = _gen(10)
    douts = (torch.randn(base[0].shape, generator=g), torch.randn(1, 2, N, generator=g))

    def run(fn, ts, cast=lambda t: t):
        return fn(*ts[:5], z=ts[5], initial_state=ts[6], D=cast(kw["D"]), delta_bias=cast(kw["delta_bias"]),
                  delta_softplus=True, return_last_state=True)

    got = _grads(lambda *ts: run(kernkit.selective_scan, ts), tensors, douts)
    exp = _grads(lambda *ts: run(selective_scan_ref, ts, lambda t: t.double()), [t.double() for t in tensors],
                 tuple(d.double() for d in douts))
    for name, gg, e in zip(["u", "delta", "A", "B", "C", "z", "h0"], got, exp):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(gg.double(), e, rtol=6e-3, atol=6e-3 * scale, msg=f"d{name}")


@pytest.mark.parametrize("bc", ["invariant", "variable", "grouped"])
def test_selective_scan_gradcheck(bc):
    base, extra = _ss_inputs(2, 4, 3, 6, bc, torch.float64, seed=2)
    base = [t.double().requires_grad_() for t in base]
    ex = [extra[k].double().requires_grad_() for k in ("D", "z", "delta_bias", "initial_state")]

    def f(u, delta, A, B, C, D, z, db, h0):
        return kernkit.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=db, delta_softplus=True,
                                      initial_state=h0, return_last_state=True)

    assert torch.autograd.gradcheck(f, base + ex)


def test_selective_scan_last_state_gradient_and_split():
    base, extra = _ss_inputs(1, 3, 8, 40, "variable", torch.float32, seed=3)
    u, delta, A, B, C = base
    whole, last = kernkit.selective_scan(u, delta, A, B, C, return_last_state=True)
    o1, s1 = kernkit.selective_scan(u[..., :25], delta[..., :25], A, B[..., :25], C[..., :25], return_last_state=True)
    o2, s2 = kernkit.selective_scan(u[..., 25:], delta[..., 25:], A, B[..., 25:], C[..., 25:], initial_state=s1,
                                    return_last_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], -1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, last, rtol=1e-5, atol=1e-5)
    # gradient through the carried state equals the gradient of the whole sequence
    ug = u.clone().requires_grad_()
    a1, b1 = kernkit.selective_scan(ug[..., :25], delta[..., :25], A, B[..., :25], C[..., :25],
                                    return_last_state=True)
    a2 = kernkit.selective_scan(ug[..., 25:], delta[..., 25:], A, B[..., 25:], C[..., 25:], initial_state=b1)
    (torch.cat([a1, a2], -1) ** 2).sum().backward()
    uw = u.clone().requires_grad_()
    (kernkit.selective_scan(uw, delta, A, B, C) ** 2).sum().backward()
    torch.testing.assert_close(ug.grad, uw.grad, rtol=1e-4, atol=1e-5)


def test_selective_scan_extreme_decay_stays_finite():
    base, _ = _ss_inputs(1, 4, 16, 64, "variable", torch.float32, seed=4)
    u, delta, A, B, C = base
    out = kernkit.selective_scan(u, delta * 100 + 20, A * 1000, B, C, delta_softplus=True)
    assert torch.isfinite(out).all()
    ug = u.clone().requires_grad_()
    kernkit.selective_scan(ug, delta * 100 + 20, A * 1000, B, C, delta_softplus=True).sum().backward()
    assert torch.isfinite(ug.grad).all()


def test_selective_scan_deterministic_opcheck_compile():
    from kernkit.scan import _ss_op

    base, extra = _ss_inputs(2, 8, 16, 50, "grouped", torch.float32, seed=5)
    u, delta, A, B, C = base
    args = (u, delta, A, B, C, extra["D"], extra["z"], extra["delta_bias"], True, extra["initial_state"], True)
    torch.library.opcheck(_ss_op, args)
    torch.library.opcheck(_ss_op, tuple(t.requires_grad_() if torch.is_tensor(t) else t for t in args))
    f = torch.compile(lambda *a: kernkit.selective_scan(*a, delta_softplus=True).square().sum(), fullgraph=True,
                      backend="aot_eager")
    leaves = [t.detach().requires_grad_() for t in base]
    g1 = torch.autograd.grad(f(*leaves), leaves)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        g2 = torch.autograd.grad(kernkit.selective_scan(*leaves, delta_softplus=True).square().sum(), leaves)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("change, exc, match", [
    (dict(u=torch.randn(2, 4)), ValueError, "u must be"),
    (dict(delta=torch.rand(2, 4, 9)), ValueError, "delta must have"),
    (dict(delta=torch.rand(2, 4, 10).double()), TypeError, "delta dtype"),
    (dict(A=torch.randn(3, 16)), ValueError, "A must be"),
    (dict(B=torch.randn(2, 3, 16, 10)), ValueError, "groups"),
    (dict(B=torch.randn(2, 16, 9)), ValueError, "variable B"),
    (dict(C=torch.randn(4, 15)), ValueError, "time-invariant C"),
    (dict(D=torch.randn(3)), ValueError, "D must have"),
    (dict(z=torch.randn(2, 4, 9)), ValueError, "z must match"),
    (dict(initial_state=torch.randn(2, 4, 15)), ValueError, "initial_state"),
])
def test_selective_scan_bad_inputs(change, exc, match):
    args = dict(u=torch.randn(2, 4, 10), delta=torch.rand(2, 4, 10), A=-torch.rand(4, 16), B=torch.randn(2, 16, 10),
                C=torch.randn(2, 16, 10))
    args.update(change)
    with pytest.raises(exc, match=match):
        kernkit.selective_scan(**args)


# --------------------------------------------------------------------------- CUDA kernels (GPU, or simt on CPU)

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_linear_scan_cuda(gpu, dtype, reverse):
    # few rows, long time: the chunked scan (chunks of 32 steps here, the last one short)
    _check_linear_scan((3, 700, 5, 40), (3, 700, 1, 40), dtype, reverse, device=gpu.device)
    _check_linear_scan((1, 1001, 2), (1, 1001, 1), dtype, reverse, device=gpu.device)
    _check_linear_scan((2, 33, 300), (1, 33, 1), dtype, reverse, device=gpu.device)  # one thread per row
    if gpu.session:
        names = {torch.float32: "float", torch.float64: "double", torch.float16: "__half",
                 torch.bfloat16: "__nv_bfloat16"}
        assert set(gpu.session.kernels) == {f"{k}<{names[dtype]}>" for k in (
            "linear_scan_kernel", "chunk_carry_kernel", "chunk_start_kernel", "chunk_write_kernel")}


def test_linear_scan_cuda_chunked_deterministic(gpu):
    g = _gen(3)
    a = (torch.rand(2, 3000, 3, generator=g) * 0.2 + 0.8).to(gpu.device)
    b = torch.randn(2, 3000, 3, generator=g).to(gpu.device)
    h1, h2 = kernkit.linear_scan(a, b), kernkit.linear_scan(a, b)
    assert torch.equal(h1, h2)
    # states handed between calls equal one long call (to rounding: the chunked carries regroup the products)
    h_first = kernkit.linear_scan(a[:, :1700], b[:, :1700])
    h_rest = kernkit.linear_scan(a[:, 1700:], b[:, 1700:], h_first[:, -1])
    torch.testing.assert_close(torch.cat([h_first, h_rest], 1), h1, rtol=1e-5, atol=1e-5)


def test_linear_scan_cuda_gradcheck(gpu):
    g = _gen(1)
    a = (torch.rand(2, 9, 3, generator=g, dtype=torch.float64) * 0.9).to(gpu.device).requires_grad_()
    b = torch.randn(2, 9, 3, generator=g, dtype=torch.float64).to(gpu.device).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).to(gpu.device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, z: kernkit.linear_scan(x, y, z, reverse=True), (a, b, h0))


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("W", [1, 2, 4, 7])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_causal_conv1d_cuda(gpu, dtype, W, act):
    _check_conv(dtype, 300 if W != 4 else 1, W, act, device=gpu.device)
    if gpu.session:
        assert {k.split("<")[0] for k in gpu.session.kernels} == {"conv_fwd_kernel", "conv_dx_kernel", "conv_dw_kernel"}


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_conv1d_cuda_fp32_weights_and_seq_idx(gpu, dtype, act):
    _check_conv_mixed(dtype, act, gpu.device, L=40)
    _check_conv_seq(dtype, act, gpu.device, W=3, wide=True)
    _check_conv_seq(dtype, act, gpu.device, W=4)
    if gpu.session:
        assert {k.split("<")[0] for k in gpu.session.kernels} == {"conv_fwd_kernel", "conv_dx_kernel", "conv_dw_kernel"}


def test_causal_conv1d_cuda_gradcheck(gpu):
    g = _gen(7)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(gpu.device).requires_grad_()
    args = (mk(2, 3, 11), mk(3, 4), mk(3), mk(2, 3, 3))
    assert torch.autograd.gradcheck(
        lambda x, w, b, i: kernkit.causal_conv1d(x, w, b, activation="silu", initial_state=i,
                                                 return_final_state=True), args)


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("W, S, L_new", [(4, 4, 1), (4, 3, 5), (7, 9, 2)])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_causal_conv1d_update_cuda(gpu, dtype, W, S, L_new, act):
    _check_conv_update(dtype, W, S, L_new, act, device=gpu.device, cuda_kernels=True)
    if gpu.session:
        assert {k.split("<")[0] for k in gpu.session.kernels} == {"conv_update_kernel", "conv_fwd_kernel"}


def test_causal_conv1d_update_cuda_fp32_weights(gpu):
    _check_conv_update(torch.bfloat16, 4, 4, 1, "silu", device=gpu.device, wide=True, cuda_kernels=True)


def _check_ss_cuda(device, dtype, Bsz, Dm, N, L, bc, opts, seed=0):
    """selective_scan's CUDA kernels, forward (out and last state) and backward (every input incl. the
    initial state and the last state's gradient) against the fp64 reference, with mamba-ssm's
    tolerances (3x for gradients)."""
    base, extra = _ss_inputs(Bsz, Dm, N, L, bc, dtype, seed=seed)
    kw = _pick(extra, opts)
    names = ["u", "delta", "A", "B", "C"] + [k for k in kw if torch.is_tensor(kw[k])]
    flags = {k: v for k, v in kw.items() if not torch.is_tensor(v)}
    tensors = base + [kw[k] for k in names[5:]]
    g = _gen(seed + 100)
    dout = torch.randn(base[0].shape, generator=g).to(dtype)
    dlast = torch.randn(Bsz, Dm, N, generator=g)

    def run(fn, ts):
        return fn(*ts[:5], **dict(zip(names[5:], ts[5:])), **flags, return_last_state=True)

    got_out = run(kernkit.selective_scan, [t.to(device) for t in tensors])
    exp_out = run(selective_scan_ref, [t.double() for t in tensors])
    rtol, atol = SS_TOL[dtype]
    assert got_out[0].dtype == dtype and got_out[1].dtype == torch.float32
    for a, e, what in zip(got_out, exp_out, ("out", "last_state")):
        torch.testing.assert_close(a.cpu().double(), e, rtol=rtol, atol=atol, msg=what)
    got = _grads(lambda *ts: run(kernkit.selective_scan, list(ts)), [t.to(device) for t in tensors],
                 (dout.to(device), dlast.to(device)))
    exp = _grads(lambda *ts: run(selective_scan_ref, list(ts)), [t.double() for t in tensors],
                 (dout.double(), dlast.double()))
    for name, gg, e in zip(names, got, exp):
        assert gg.dtype == tensors[names.index(name)].dtype, name
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(gg.cpu().double(), e, rtol=rtol * 3, atol=atol * 3 * scale, msg=f"d{name}")
    return got


@pytest.mark.parametrize("opts", [OPTIONS[1], OPTIONS[3]], ids=["softplus", "all"])
@pytest.mark.parametrize("bc", ["invariant", "variable", "grouped"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selective_scan_cuda(gpu, dtype, bc, opts):
    # L = 37: four full 8-step chunks and a short one
    _check_ss_cuda(gpu.device, dtype, 2, 4, 16, 37, bc, opts)
    if gpu.session:
        kernels = {k.split("<")[0] for k in gpu.session.kernels}
        assert {"ss_fwd_kernel", "ss_bwd_kernel", "sum_over_batch_kernel"} <= kernels
        assert ("sum_over_tiles_kernel" in kernels) == (bc != "invariant")


@pytest.mark.parametrize("shape", [(1, 3, 5, 1), (2, 6, 3, 17), (1, 2, 200, 9), (3, 12, 16, 8), (1, 160, 1, 12)],
                         ids=str)
def test_selective_scan_cuda_geometries(gpu, shape):
    # N not a power of two, N > 128 (two states per thread), one step, D / G = 3 channels per group (a
    # block of 3 channels), D > one block (12 = 8 + 4: blocks of 4 inside groups of 6), N = 1
    Bsz, Dm, N, L = shape
    _check_ss_cuda(gpu.device, torch.float32, Bsz, Dm, N, L, "grouped" if Dm % 2 == 0 else "variable", OPTIONS[3])
    _check_ss_cuda(gpu.device, torch.float32, Bsz, Dm, N, L, "invariant", OPTIONS[2])


def test_selective_scan_cuda_deterministic_and_split(gpu):
    dev = gpu.device
    a = _check_ss_cuda(dev, torch.float32, 2, 8, 16, 40, "grouped", OPTIONS[3], seed=5)
    b = _check_ss_cuda(dev, torch.float32, 2, 8, 16, 40, "grouped", OPTIONS[3], seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    base, _ = _ss_inputs(1, 3, 8, 40, "variable", torch.float32, seed=3)
    u, delta, A, B, C = (t.to(dev) for t in base)
    whole, last = kernkit.selective_scan(u, delta, A, B, C, return_last_state=True)
    o1, s1 = kernkit.selective_scan(u[..., :25], delta[..., :25], A, B[..., :25].contiguous(),
                                    C[..., :25].contiguous(), return_last_state=True)
    o2, s2 = kernkit.selective_scan(u[..., 25:], delta[..., 25:], A, B[..., 25:].contiguous(),
                                    C[..., 25:].contiguous(), initial_state=s1, return_last_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], -1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, last, rtol=1e-5, atol=1e-5)
    big = kernkit.selective_scan(u, delta * 100 + 20, A * 1000, B, C, delta_softplus=True)
    assert torch.isfinite(big).all()
    with pytest.raises((ValueError, RuntimeError), match="float64"):
        kernkit.selective_scan(*(t.double() for t in (u, delta)), A.double(), B.double(), C.double())


def _check_ss_empty(device):
    # L = 0 (and B = 0): out is empty, the last state is the initial one, its gradient passes through
    for Bsz, L, var in ((2, 0, True), (2, 0, False), (0, 5, True)):
        u = torch.randn(Bsz, 4, L).to(device).requires_grad_()
        delta = torch.rand(Bsz, 4, L).to(device).requires_grad_()
        A = (-torch.rand(4, 8)).to(device).requires_grad_()
        B = (torch.randn(Bsz, 8, L) if var else torch.randn(4, 8)).to(device).requires_grad_()
        C = torch.randn(4, 8).to(device).requires_grad_()
        h0 = torch.randn(Bsz, 4, 8).to(device).requires_grad_()
        out, last = kernkit.selective_scan(u, delta, A, B, C, initial_state=h0, return_last_state=True)
        assert out.shape == (Bsz, 4, L) and torch.equal(last, h0.detach())
        (out.sum() + 2 * last.sum()).backward()
        assert torch.equal(h0.grad, torch.full_like(h0, 2.0)) and not A.grad.any() and not C.grad.any()


def test_selective_scan_empty_length():
    _check_ss_empty("cpu")


def test_selective_scan_cuda_empty_length(gpu):
    _check_ss_empty(gpu.device)
