import pytest
import torch

import kernkit
from kernkit.reference import linear_attn_chunk_ref, linear_attn_recurrent_ref, linear_attn_step_ref
from helpers import assert_within_ref_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GATES = ["none", "head", "scalar", "vector"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gate(kind, B, T, H, K, g, strength=0.5):
    if kind == "none":
        return None
    shape = {"head": (H,), "scalar": (B, T, H), "vector": (B, T, H, K)}[kind]
    return -torch.rand(shape, generator=g, dtype=torch.float64) * strength


def _inputs(B, T, H, K, V, dtype, gate, seed=0, h0=True, strength=0.5):
    g = _gen(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=g, dtype=torch.float64).to(dtype) for d in (K, K, V))
    gg = _gate(gate, B, T, H, K, g, strength)
    gg = None if gg is None else gg.to(_acc(dtype))
    s0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64).to(_acc(dtype)) if h0 else None
    return q, k, v, gg, s0


def _run(fn, q, k, v, g, h0, do, dht, **kw):
    """Outputs and gradients of fn (linear_attn or a reference) for the given cotangents."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (q, k, v, g, h0)]
    o, ht = fn(*leaves[:4], initial_state=leaves[4], output_final_state=True, **kw)
    loss = (o.double() * do.double()).sum() + (ht.double() * dht.double()).sum()
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    it = iter(grads)
    return o, ht, [next(it) if t is not None else None for t in leaves]


def _on_device(device):
    """kernkit.linear_attn on `device` (the gpu fixture's): inputs moved there, results back on the CPU,
    differentiable both ways."""
    def run(*args, initial_state=None, cu_seqlens=None, **kw):
        mv = lambda t: None if t is None else t.to(device)
        o, ht = kernkit.linear_attn(*(mv(t) for t in args), initial_state=mv(initial_state),
                                    cu_seqlens=mv(cu_seqlens), **kw)
        return o.cpu(), (None if ht is None else ht.cpu())
    return run


def _rel_rms(a, b):
    b = b.double()
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(B, T, H, K, V, dtype, gate, h0=True, chunk=64, cu=None, strength=0.5, device=None):
    q, k, v, g, s0 = _inputs(B, T, H, K, V, dtype, gate, h0=h0, strength=strength)
    if cu is not None and s0 is not None:
        s0 = torch.randn(cu.numel() - 1, H, K, V, generator=_gen(5), dtype=torch.float64).to(_acc(dtype))
    gen = _gen(1)
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64).to(dtype)
    N = B if cu is None else cu.numel() - 1
    dht = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64).to(_acc(dtype))
    fn = kernkit.linear_attn if device is None else _on_device(device)
    o, ht, grads = _run(fn, q, k, v, g, s0, do, dht, chunk_size=chunk, cu_seqlens=cu)
    dbl = [None if t is None else t.double() for t in (q, k, v, g, s0)]
    eo, eht, egrads = _run(linear_attn_recurrent_ref, *dbl, do, dht, cu_seqlens=cu)
    # (the CUDA kernels run chunks of at most 64 rows: so does their same-dtype reference)
    so, sht, sgrads = _run(linear_attn_chunk_ref, q, k, v, g, s0, do, dht, chunk_size=chunk if device is None else
                           min(chunk, 64), cu_seqlens=cu)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert ht.dtype == _acc(dtype) and ht.shape == (N, H, K, V)
    assert_within_ref_error(o, eo, so, what="o")
    assert_within_ref_error(ht, eht, sht, what="final_state")
    for name, got, ex, same in zip(("dq", "dk", "dv", "dg", "dh0"), grads, egrads, sgrads):
        if got is None:
            continue
        assert got.shape == ex.shape, name
        if name == "dg" and gate == "head":
            # A per-head constant's gradient sums B*T per-step terms; the kernel's fp32 rounding of
            # each (chunk-local sums of q.dq - k.dk) may exceed the reference's, but stays at fp32 level.
            err = (got.double() - ex).abs().max().item()
            assert err <= max(3.0 * (same.double() - ex).abs().max().item(), 3e-5 * ex.abs().max().item()), err
            continue
        assert_within_ref_error(got.to(same.dtype), ex, same, factor=3.0, what=name)
    if dtype == torch.bfloat16 and T >= 64:  # fla's bf16 tolerance: relative RMS error
        assert _rel_rms(o, eo) < 0.008
        for name, got, ex in zip(("dq", "dk", "dv"), grads, egrads):
            assert _rel_rms(got, ex) < 0.008, name
    return o, ht, grads


@pytest.mark.parametrize("T", [1, 17, 63, 64, 65, 200])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(isa, dtype, gate, T):
    _check(2, T, 3, 24, 40, dtype, gate, h0=T % 2 == 1)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequence(dtype, gate):
    _check(1, 1000, 2, 64, 64, dtype, gate)


@pytest.mark.parametrize("K,V", [(1, 1), (5, 3), (16, 130), (128, 128), (256, 256), (200, 48)])
def test_head_dims(K, V):
    _check(1, 70, 1, K, V, torch.bfloat16, "vector", chunk=32)
    _check(1, 70, 2, K, V, torch.float32, "scalar", chunk=32)


@pytest.mark.parametrize("chunk", [16, 32, 48, 128])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_chunk_sizes(gate, chunk):
    _check(2, 150, 2, 32, 32, torch.float32, gate, chunk=chunk)
    q, k, v, g, s0 = _inputs(1, 150, 2, 32, 32, torch.float32, gate)
    a, _ = kernkit.linear_attn(q, k, v, g, initial_state=s0, chunk_size=chunk)
    b, _ = kernkit.linear_attn(q, k, v, g, initial_state=s0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen(isa, dtype, gate):
    cu = torch.tensor([0, 17, 17, 81, 150, 151], dtype=torch.int32)
    _check(1, 151, 2, 32, 24, dtype, gate, cu=cu)
    _check(1, 151, 2, 32, 24, dtype, gate, cu=cu, h0=False)


@pytest.mark.parametrize("strength", [20.0, 1e-6])
@pytest.mark.parametrize("gate", ["head", "scalar", "vector"])
def test_extreme_gates(gate, strength):
    """Very strong decay (g ~ -20 per step) and almost none: no overflow, no NaN."""
    q, k, v, g, s0 = _inputs(1, 130, 2, 32, 32, torch.float32, gate, strength=strength)
    if gate != "none":
        g = torch.full_like(g, -strength)
    for dtype in (torch.float32, torch.bfloat16):
        o, ht = kernkit.linear_attn(q.to(dtype), k.to(dtype), v.to(dtype), g, initial_state=s0,
                                    output_final_state=True)
        eo, eht = linear_attn_recurrent_ref(q.double(), k.double(), v.double(), g.double(), initial_state=s0.double(),
                                            output_final_state=True)
        assert torch.isfinite(o).all() and torch.isfinite(ht).all()
        tol = 1e-4 if dtype == torch.float32 else 0.01
        assert _rel_rms(o, eo) < tol and _rel_rms(ht, eht) < tol
    _check(1, 130, 2, 32, 32, torch.float32, gate, strength=strength)


@pytest.mark.parametrize("gate", GATES)
def test_gradcheck(gate):
    q, k, v, g, s0 = _inputs(1, 9, 2, 3, 4, torch.float64, gate)
    args = [t.requires_grad_() for t in (q, k, v, g, s0) if t is not None]

    def f(*xs):
        it = iter(xs)
        q_, k_, v_ = next(it), next(it), next(it)
        g_ = next(it) if g is not None else None
        s_ = next(it)
        o, ht = kernkit.linear_attn(q_, k_, v_, g_, initial_state=s_, output_final_state=True)
        return o, ht

    assert torch.autograd.gradcheck(f, args)


def test_gradcheck_varlen():
    q, k, v, g, _ = _inputs(1, 12, 1, 3, 2, torch.float64, "vector")
    s0 = torch.randn(3, 1, 3, 2, dtype=torch.float64)
    cu = torch.tensor([0, 5, 5, 12], dtype=torch.int32)
    args = [t.requires_grad_() for t in (q, k, v, g, s0)]
    assert torch.autograd.gradcheck(
        lambda *xs: kernkit.linear_attn(*xs[:4], initial_state=xs[4], output_final_state=True, cu_seqlens=cu), args)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_chunked_equals_decode_steps(dtype, gate):
    B, T, H, K, V = 2, 40, 3, 16, 24
    q, k, v, g, s0 = _inputs(B, T, H, K, V, dtype, gate)
    o, ht = kernkit.linear_attn(q, k, v, g, initial_state=s0, output_final_state=True)
    state, outs = s0.clone(), []
    for t in range(T):
        gt = None if g is None else (g if g.dim() == 1 else g[:, t])
        before = state.clone()
        ot, state_new = kernkit.linear_attn_step(q[:, t], k[:, t], v[:, t], state, gt)
        assert torch.equal(state, before), "linear_attn_step modified its state input"
        eo, es = linear_attn_step_ref(q[:, t], k[:, t], v[:, t], state, gt)
        torch.testing.assert_close(ot.double(), eo.double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                                   atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
        state = state_new
        outs.append(ot)
    tol = dict(rtol=1e-4, atol=1e-4)
    if dtype == torch.bfloat16:  # bf16 outputs: compare by relative RMS (fla's measure)
        assert _rel_rms(torch.stack(outs, 1), o) < 0.01
    else:
        torch.testing.assert_close(torch.stack(outs, 1).double(), o.double(), **tol)
    # bf16 chunks round the decayed keys to bf16 for the state GEMM; the step keeps fp32
    torch.testing.assert_close(state, ht, **(dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else tol))


def test_step_shapes_and_grad():
    q, k, v, g, s0 = _inputs(2, 1, 3, 8, 5, torch.float32, "vector")
    o4, s4 = kernkit.linear_attn_step(q, k, v, s0, g)  # (B, 1, H, .) forms
    o3, s3 = kernkit.linear_attn_step(q[:, 0], k[:, 0], v[:, 0], s0, g[:, 0])
    assert o4.shape == (2, 1, 3, 5) and o3.shape == (2, 3, 5)
    torch.testing.assert_close(o4[:, 0], o3)
    torch.testing.assert_close(s4, s3)
    qq = q[:, 0].clone().requires_grad_()
    ss = s0.clone().requires_grad_()
    o, s = kernkit.linear_attn_step(qq, k[:, 0], v[:, 0], ss, g[:, 0])
    (o.sum() + s.sum()).backward()
    eq = qq.detach().clone().requires_grad_()
    es = s0.clone().requires_grad_()
    eo, e_s = linear_attn_step_ref(eq, k[:, 0], v[:, 0], es, g[:, 0])
    (eo.sum() + e_s.sum()).backward()
    torch.testing.assert_close(qq.grad, eq.grad)
    torch.testing.assert_close(ss.grad, es.grad)


def test_noncontiguous_inputs():
    g = _gen(3)
    qkv = torch.randn(2, 70, 3, 3, 16, generator=g)  # packed (B, T, 3, H, D): strided q, k, v
    q, k, v = qkv.unbind(2)
    o, _ = kernkit.linear_attn(q, k, v)
    eo, _ = linear_attn_recurrent_ref(q.double(), k.double(), v.double())
    torch.testing.assert_close(o.double(), eo, rtol=1e-5, atol=1e-5)
    qt = torch.randn(2, 16, 70, 3, generator=g).transpose(1, 3)  # last dim not contiguous
    o2, _ = kernkit.linear_attn(qt, qt, qt)
    eo2, _ = linear_attn_recurrent_ref(qt.double(), qt.double(), qt.double())
    torch.testing.assert_close(o2.double(), eo2, rtol=1e-5, atol=1e-5)


def test_thread_count_does_not_change_results():
    q, k, v, g, s0 = _inputs(1, 300, 1, 64, 128, torch.bfloat16, "scalar")
    before = torch.get_num_threads()
    try:
        res = []
        for n in (1, 2):
            torch.set_num_threads(n)
            o, ht = kernkit.linear_attn(q, k, v, g, initial_state=s0, output_final_state=True)
            res.append((o, ht))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


def test_retnet_decay():
    g = kernkit.retnet_decay(4)
    expect = torch.log(1 - 2.0 ** (-5 - torch.arange(4, dtype=torch.float64)))
    torch.testing.assert_close(g.double(), expect, rtol=1e-6, atol=0)
    assert (g < 0).all()
    with pytest.raises(ValueError, match="num_heads"):
        kernkit.retnet_decay(0)


def test_empty_and_zero_length():
    q, k, v, g, s0 = _inputs(2, 0, 2, 8, 8, torch.float32, "scalar")
    o, ht = kernkit.linear_attn(q, k, v, g, initial_state=s0, output_final_state=True)
    assert o.shape == (2, 0, 2, 8)
    torch.testing.assert_close(ht, s0)


def test_opcheck_and_compile():
    q, k, v, g, s0 = _inputs(1, 37, 2, 8, 8, torch.float32, "scalar")
    torch.library.opcheck(torch.ops.kernkit.linear_attn_fwd.default, (q, k, v, g, s0, None, 0.3, 16, True))
    sq, sk, sv = q[:, 0].contiguous(), k[:, 0].contiguous(), v[:, 0].contiguous()
    torch.library.opcheck(torch.ops.kernkit.linear_attn_step.default, (sq, sk, sv, g[:, 0].contiguous(), s0, 0.3))

    def f(q, k, v, g, s0):
        o, ht = kernkit.linear_attn(q, k, v, g, initial_state=s0, output_final_state=True)
        return o * 2, ht

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v, g, s0)
    want = f(q, k, v, g, s0)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


# --------------------------------------------------------------------------- bad input

def _ok(**over):
    q, k, v, g, s0 = _inputs(2, 10, 3, 8, 4, torch.float32, "scalar")
    args = dict(q=q, k=k, v=v, g=g, initial_state=s0)
    args.update(over)
    return args


def _call(a):
    a = dict(a)
    return kernkit.linear_attn(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("g"), **a)


@pytest.mark.parametrize("over,exc,match", [
    (dict(g=torch.full((2, 10, 3), 0.5)), ValueError, "g .* <= 0"),
    (dict(g=torch.full((2, 10, 3), float("nan"))), ValueError, "NaN"),
    (dict(g=torch.zeros(2, 10, 4)), ValueError, "g must be"),
    (dict(g=torch.zeros(3, dtype=torch.int64)), TypeError, "g has dtype"),
    (dict(initial_state=torch.zeros(2, 3, 8, 5)), ValueError, "initial_state must have shape"),
    (dict(initial_state=torch.zeros(2, 3, 8, 4, dtype=torch.int32)), TypeError, "initial_state has dtype"),
    (dict(cu_seqlens=torch.tensor([0., 10.]), q=torch.zeros(1, 10, 3, 8), k=torch.zeros(1, 10, 3, 8),
          v=torch.zeros(1, 10, 3, 4)), TypeError, "cu_seqlens"),
    (dict(k=torch.zeros(2, 10, 4, 8)), ValueError, "k must have q's shape"),
    (dict(v=torch.zeros(2, 10, 2, 4)), ValueError, "v must match q"),
    (dict(v=torch.zeros(2, 10, 3, 4, dtype=torch.float64)), TypeError, "share one dtype"),
    (dict(q=torch.zeros(2, 10, 3, 8, dtype=torch.int32)), TypeError, "q has dtype"),
    (dict(q=torch.zeros(10, 3, 8)), ValueError, "q must be 4-D"),
    (dict(q=torch.zeros(2, 10, 3, 300), k=torch.zeros(2, 10, 3, 300)), ValueError, "head dims"),
    (dict(chunk_size=24), ValueError, "chunk_size"),
    (dict(chunk_size=256), ValueError, "chunk_size"),
    (dict(scale=float("inf")), ValueError, "scale"),
    (dict(cu_seqlens=torch.tensor([0, 10], dtype=torch.int32)), ValueError, "batch size must be 1"),
    (dict(output_final_state=1), TypeError, "output_final_state"),
])
def test_bad_inputs(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(_ok(**over))


def test_bad_varlen_inputs():
    q, k, v, g, _ = _inputs(1, 10, 2, 8, 4, torch.float32, "scalar")
    with pytest.raises(ValueError, match="cu_seqlens"):
        kernkit.linear_attn(q, k, v, g, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(TypeError, match="cu_seqlens"):
        kernkit.linear_attn(q, k, v, g, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int16))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        kernkit.linear_attn(q, k, v, g, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32),
                            initial_state=torch.zeros(1, 2, 8, 4))


def test_bad_step_inputs():
    q, k, v, g, s0 = _inputs(2, 1, 3, 8, 4, torch.float32, "scalar")
    q3, k3, v3 = q[:, 0], k[:, 0], v[:, 0]
    with pytest.raises(ValueError, match="state must have shape"):
        kernkit.linear_attn_step(q3, k3, v3, s0[:, :2])
    with pytest.raises(ValueError, match="g .* <= 0"):
        kernkit.linear_attn_step(q3, k3, v3, s0, torch.ones(3))
    with pytest.raises(ValueError, match="g must be"):
        kernkit.linear_attn_step(q3, k3, v3, s0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="q must be"):
        kernkit.linear_attn_step(q[:, :1].expand(2, 2, 3, 8), k, v, s0)
    with pytest.raises(ValueError, match="k must have q's rank"):
        kernkit.linear_attn_step(q3, k, v3, s0)
    with pytest.raises(TypeError, match="state must be float32"):
        kernkit.linear_attn_step(q3, k3, v3, s0.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_inplace(dtype):
    q, k, v, g, s0 = _inputs(2, 1, 3, 8, 20, dtype, "vector")
    o_ref, s_ref = kernkit.linear_attn_step(q, k, v, s0, g)
    state = s0.clone()
    o, s = kernkit.linear_attn_step(q, k, v, state, g, inplace=True)
    assert s is state
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(state, s_ref)
    with pytest.raises(RuntimeError, match="inplace"):
        kernkit.linear_attn_step(q, k, v, state.clone().requires_grad_(), g, inplace=True)
    with pytest.raises(ValueError, match="contiguous"):
        kernkit.linear_attn_step(q, k, v, state.transpose(2, 3).contiguous().transpose(2, 3), g, inplace=True)
    torch.library.opcheck(torch.ops.kernkit.linear_attn_step_.default,
                          (q[:, 0].contiguous(), k[:, 0].contiguous(), v[:, 0].contiguous(), g[:, 0].contiguous(),
                           s0.clone(), 0.5))


@pytest.mark.parametrize("gshape", [None, "H", "BH", "B1H", "BHK", "B1HK"])
@pytest.mark.parametrize("seq_dim", [False, True])
def test_step_fast_path_equals_checked_path(isa, gshape, seq_dim):
    # plain contiguous inputs take the lean path; a non-contiguous copy of q forces the fully
    # checked one: both must give the same bits, in place too
    B, H, K, V = 2, 3, 8, 5
    gen = torch.Generator().manual_seed(7)
    mk = lambda *s: torch.randn(*s, generator=gen)
    q, k, v = (mk(B, 1, H, K), mk(B, 1, H, K), mk(B, 1, H, V)) if seq_dim else (mk(B, H, K), mk(B, H, K), mk(B, H, V))
    shapes = {None: None, "H": (H,), "BH": (B, H), "B1H": (B, 1, H), "BHK": (B, H, K), "B1HK": (B, 1, H, K)}
    g = None if gshape is None else -torch.rand(*shapes[gshape], generator=gen)
    s0 = mk(B, H, K, V)
    q_strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    o1, s1 = kernkit.linear_attn_step(q, k, v, s0, g)
    o2, s2 = kernkit.linear_attn_step(q_strided, k, v, s0, g)
    assert o1.shape == v.shape and torch.equal(o1, o2) and torch.equal(s1, s2)
    g3 = None if g is None else (g.squeeze(1) if gshape.startswith("B1") else g).double()
    ref_o, ref_s = linear_attn_step_ref(q.reshape(B, H, K).double(), k.reshape(B, H, K).double(),
                                        v.reshape(B, H, V).double(), s0.double(), g3)
    torch.testing.assert_close(o1.double(), ref_o.reshape(o1.shape), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1.double(), ref_s, rtol=1e-5, atol=1e-5)
    state = s0.clone()
    o3, s3 = kernkit.linear_attn_step(q, k, v, state, g, inplace=True)
    assert s3 is state and torch.equal(o3, o1) and torch.equal(state, s1)


def test_step_bad_gate_leaves_state_untouched():
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 2, 4), torch.randn(1, 2, 3)
    state = torch.randn(1, 2, 4, 3)
    before = state.clone()
    for bad in (torch.tensor([[-0.1, 0.2]]), torch.tensor([[-0.1, float("nan")]])):
        with pytest.raises(ValueError, match="linear_attn_step: g .* <= 0"):
            kernkit.linear_attn_step(q, k, v, state, bad, inplace=True)
        assert torch.equal(state, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gshape", [None, "H", "BH", "BHK"])
def test_step_cuda(gpu, dtype, gshape):
    # the CUDA decode step (no autograd), new state and in place, against the fp64 reference; K and V
    # past one block of threads (V = 150: two columns per thread) and small (K = 3, V = 5)
    dev = gpu.device
    gen = torch.Generator().manual_seed(11)
    for B, H, K, V in ((2, 3, 3, 5), (1, 2, 40, 150)):
        mk = lambda *s: torch.randn(*s, generator=gen)
        q, k, v = mk(B, H, K).to(dtype), mk(B, H, K).to(dtype), mk(B, H, V).to(dtype)
        shapes = {None: None, "H": (H,), "BH": (B, H), "BHK": (B, H, K)}
        g = None if gshape is None else -torch.rand(*shapes[gshape], generator=gen)
        s0 = mk(B, H, K, V)
        ref_o, ref_s = linear_attn_step_ref(q.double(), k.double(), v.double(), s0.double(),
                                            None if g is None else g.double())
        todev = lambda t: None if t is None else t.to(dev)
        o, s = kernkit.linear_attn_step(todev(q), todev(k), todev(v), todev(s0), todev(g))
        tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
        assert o.dtype == dtype and s.dtype == torch.float32
        torch.testing.assert_close(o.cpu().double(), ref_o.double(), rtol=tol, atol=tol * 4)
        torch.testing.assert_close(s.cpu().double(), ref_s, rtol=1e-5, atol=1e-5)
        state = s0.clone().to(dev)
        o2, s2 = kernkit.linear_attn_step(todev(q), todev(k), todev(v), state, todev(g), inplace=True)
        assert s2 is state and torch.equal(o2, o) and torch.equal(state, s)
    if gpu.session:
        assert {k.split("<")[0] for k in gpu.session.kernels} == {"la_step_kernel"}
    # training through the step runs linear_attn's CUDA chunk kernels (test_linear_attn_cuda.py)
