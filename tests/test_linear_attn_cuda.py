"""kernkit's CUDA chunked linear-attention kernels (forward, backward incl. gate and state gradients),
run under simt (three schedules, race checker on) and on a GPU when there is one (the `gpu` fixture),
with the CPU tests' rule (test_linear_attn._check: fp64 recurrent reference, error within 2x / 3x of
the same-dtype chunked reference's): every gate form and dtype, lengths around the chunk, head dims
across 64-column blocks, chunk sizes, varlen with empty sequences, extreme decays, states handed
between calls, determinism. Sizes are what simt affords."""

import pytest
import torch

import kernkit
from kernkit.reference import linear_attn_recurrent_ref
from helpers import check_module_on_cuda_kernels, on_cpu_kernels
from test_linear_attn import DTYPES, GATES, _check, _inputs, _on_device, _rel_rms


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(gpu, dtype, gate):
    _check(2, 70, 2, 24, 40, dtype, gate, device=gpu.device)  # a full chunk and a partial one


@pytest.mark.parametrize("T", [1, 17, 64, 129])
def test_lengths(gpu, T):
    _check(1, T, 2, 16, 16, torch.bfloat16, "vector", h0=T % 2 == 1, device=gpu.device)
    _check(1, T, 1, 16, 16, torch.float32, "scalar", h0=T % 2 == 0, device=gpu.device)


@pytest.mark.parametrize("K,V", [(1, 1), (5, 3), (72, 80), (200, 48)])
def test_head_dims(gpu, K, V):
    # one to four 64-column blocks of K and V, dims that are not multiples of 16
    _check(1, 40, 1, K, V, torch.bfloat16, "vector", chunk=32, device=gpu.device)
    _check(1, 40, 1, K, V, torch.float32, "scalar", chunk=16, device=gpu.device)


@pytest.mark.parametrize("chunk", [16, 48, 128])
def test_chunk_sizes(gpu, chunk):
    _check(1, 100, 1, 16, 16, torch.float16, "scalar", chunk=chunk, device=gpu.device)
    q, k, v, g, s0 = _inputs(1, 100, 1, 16, 16, torch.float32, "vector")
    run = _on_device(gpu.device)
    a, _ = run(q, k, v, g, initial_state=s0, chunk_size=chunk)
    b, _ = run(q, k, v, g, initial_state=s0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gate", GATES)
def test_varlen(gpu, gate):
    cu = torch.tensor([0, 17, 17, 81, 150, 151], dtype=torch.int32)  # an empty and a one-row sequence
    _check(1, 151, 1, 16, 24, torch.bfloat16, gate, cu=cu, device=gpu.device)
    _check(1, 151, 1, 16, 24, torch.float32, gate, cu=cu, h0=False, device=gpu.device)


@pytest.mark.parametrize("strength", [20.0, 1e-6])
@pytest.mark.parametrize("gate", ["head", "scalar", "vector"])
def test_extreme_gates(gpu, gate, strength):
    q, k, v, g, s0 = _inputs(1, 80, 1, 16, 16, torch.float32, gate)
    g = torch.full_like(g, -strength)
    run = _on_device(gpu.device)
    for dtype in (torch.float32, torch.bfloat16):
        o, ht = run(q.to(dtype), k.to(dtype), v.to(dtype), g, initial_state=s0, output_final_state=True)
        eo, eht = linear_attn_recurrent_ref(q.double(), k.double(), v.double(), g.double(), initial_state=s0.double(),
                                            output_final_state=True)
        assert torch.isfinite(o).all() and torch.isfinite(ht).all()
        tol = 1e-4 if dtype == torch.float32 else 0.01
        assert _rel_rms(o, eo) < tol and _rel_rms(ht, eht) < tol
    _check(1, 80, 1, 16, 16, torch.float32, gate, strength=strength, device=gpu.device)


def test_states_handed_between_calls(gpu):
    # two calls chained through the final state == one call over the whole sequence
    q, k, v, g, s0 = _inputs(1, 90, 2, 16, 24, torch.float32, "vector")
    run = _on_device(gpu.device)
    o, ht = run(q, k, v, g, initial_state=s0, output_final_state=True)
    o1, h1 = run(q[:, :37], k[:, :37], v[:, :37], g[:, :37], initial_state=s0, output_final_state=True)
    o2, h2 = run(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], initial_state=h1, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h2, ht, rtol=1e-4, atol=1e-4)


def test_deterministic_and_inputs_untouched(gpu):
    q, k, v, g, s0 = _inputs(1, 70, 2, 24, 40, torch.bfloat16, "scalar")
    leaves = [t.to(gpu.device).requires_grad_() for t in (q, k, v, g, s0)]
    copies = [t.detach().clone() for t in leaves]
    results = []
    for _ in range(2):
        o, ht = kernkit.linear_attn(*leaves[:4], initial_state=leaves[4], output_final_state=True)
        grads = torch.autograd.grad((o.float().square().sum() + ht.sum()), leaves)
        results.append([o, ht, *grads])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    for t, c in zip(leaves, copies):
        assert torch.equal(t.detach(), c)


def test_strided_inputs(gpu):
    # views with a contiguous last dim (fla's (B, T, H, K) slices of a fused projection) are read in place
    B, T, H, K = 1, 40, 2, 16
    qkv = torch.randn(B, T, H, 3 * K, dtype=torch.bfloat16)
    q, k, v = qkv.split(K, -1)
    g = -torch.rand(B, T, H, K)
    o, _ = _on_device(gpu.device)(q, k, v, g)
    ref, _ = linear_attn_recurrent_ref(q.double(), k.double(), v.double(), g.double())
    assert _rel_rms(o, ref) < 0.01


def test_decode_step_and_module_on_cuda_kernels(gpu):
    # linear_attn_step under autograd (through the chunk kernels) and the nn module's training step
    # give the CPU kernels' results
    from kernkit.nn import LinearAttention

    q, k, v, g, s0 = _inputs(2, 1, 2, 8, 8, torch.float32, "vector")
    leaves = [t[:, 0].clone().requires_grad_() for t in (q, k, v)] + [s0.clone().requires_grad_()]

    def step(dev):
        xs = [t.to(dev) for t in leaves]
        o, s = kernkit.linear_attn_step(*xs[:3], xs[3], g[:, 0].to(dev))
        return torch.autograd.grad(o.square().sum() + s.sum(), leaves), o.cpu()

    got, o = step(gpu.device)
    ref, ro = on_cpu_kernels(lambda: step("cpu"))
    torch.testing.assert_close(o, ro, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    torch.manual_seed(0)
    check_module_on_cuda_kernels(LinearAttention(32, num_heads=2), torch.randn(2, 20, 32), gpu.device,
                                 grad_rtol=1e-3)
    if gpu.session:
        kernels = {kk.split("<")[0] for kk in gpu.session.kernels}
        assert {"la_states_kernel", "la_out_kernel", "la_dqdk_kernel"} <= kernels


def test_bad_inputs(gpu):
    q = torch.randn(1, 8, 2, 16, dtype=torch.float64).to(gpu.device)
    with pytest.raises(TypeError, match="float64"):
        kernkit.linear_attn(q, q, q)
    q = q.float()
    for bad in (float("-inf"), float("nan"), 0.5):
        g = torch.full((1, 8, 2), bad, device=gpu.device)
        with pytest.raises(ValueError, match="g is a log-space decay"):
            kernkit.linear_attn(q, q, q, g)


def test_fp16_state_beyond_fp16_range(gpu):
    # no decay and positive features: the fp32 state passes 65504 (fp16's largest value) after ~256
    # steps; the products with the state must not round it to fp16
    T, K = 300, 16
    q = torch.full((1, T, 1, K), 1e-3, dtype=torch.float16)
    k = v = torch.full((1, T, 1, K), 16.0, dtype=torch.float16)
    o, ht = _on_device(gpu.device)(q, k, v, output_final_state=True)
    eo, eht = linear_attn_recurrent_ref(q.double(), k.double(), v.double(), output_final_state=True)
    assert eht.max() > 70000 and torch.isfinite(o).all()
    assert _rel_rms(o, eo) < 2e-3 and _rel_rms(ht, eht) < 1e-5


def test_opcheck_and_compile(gpu):
    q, k, v, g, s0 = (t.to(gpu.device) for t in _inputs(1, 37, 2, 8, 8, torch.float32, "vector"))
    torch.library.opcheck(torch.ops.kernkit.linear_attn_fwd.default, (q, k, v, g, s0, None, 0.3, 16, True))
    cu = torch.tensor([0, 10, 10, 37], dtype=torch.int32, device=gpu.device)
    s3 = torch.randn(3, 2, 8, 8, device=gpu.device)
    torch.library.opcheck(torch.ops.kernkit.linear_attn_fwd.default, (q, k, v, g, s3, cu, 0.3, 64, True))

    def f(q, k, v, g, s0):
        o, ht = kernkit.linear_attn(q, k, v, g, initial_state=s0, output_final_state=True)
        return o * 2, ht

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, g, s0)
    want = f(q, k, v, g, s0)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
