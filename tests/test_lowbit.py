import pytest
import torch

import kernkit
from kernkit.nn import BitLinear
from kernkit.reference import (act_quant_ref, binary_linear_ref, binary_quantize_ref, bitlinear_emulated, ternary_linear_ref,
                               ternary_quantize_ref)

SIZES = [1, 3, 17, 64, 4095, 4096]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("K", SIZES)
def test_pack_unpack_round_trip(N, K):
    g = _gen(N * 7 + K)
    w_q = torch.randint(-1, 2, (N, K), generator=g, dtype=torch.int8)
    packed = kernkit.ternary_pack(w_q)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 127) // 128 * 32)
    assert torch.equal(kernkit.ternary_unpack(packed, (N, K)), w_q)
    signs = torch.where(torch.rand(N, K, generator=g) < 0.5, -1, 1).to(torch.int8)
    pb = kernkit.binary_pack(signs)
    assert pb.shape == (N, (K + 63) // 64 * 8)
    assert torch.equal(kernkit.binary_unpack(pb, (N, K)), signs)


def test_packing_layout_is_the_documented_one():
    w_q = torch.zeros(1, 128, dtype=torch.int8)
    w_q[0, 32 * 2 + 5] = 1      # code 2 in byte 5, bits 4-5
    w_q[0, 3] = -1              # code 0 in byte 3, bits 0-1
    p = kernkit.ternary_pack(w_q)
    assert p[0, 5].item() == (1 | 1 << 2 | 2 << 4 | 1 << 6)
    assert p[0, 3].item() == (0 | 1 << 2 | 1 << 4 | 1 << 6)
    s = -torch.ones(1, 16, dtype=torch.int8)
    s[0, 9] = 1
    assert kernkit.binary_pack(s)[0, 1].item() == 2


@pytest.mark.parametrize("per_row", [False, True])
def test_quantize_matches_bitnet(per_row):
    w = torch.randn(37, 300, generator=_gen(1))
    packed, scale = kernkit.ternary_quantize(w, per_row=per_row)
    w_q, s = ternary_quantize_ref(w, per_row)
    assert torch.equal(kernkit.ternary_unpack(packed, w.shape), w_q)
    assert torch.equal(scale, s)
    pb, alpha = kernkit.binary_quantize(w)
    signs, a = binary_quantize_ref(w)
    assert torch.equal(kernkit.binary_unpack(pb, w.shape), signs) and torch.equal(alpha, a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 300), (5, 4096), (129, 1000)], ids=str)
def test_fused_quantizer_matches_reference(isa, shape, per_row, dtype):
    # the fused kernel (fp64 absmean, true division, round half to even) against the plain-PyTorch chain,
    # including weights that sit exactly on the rounding boundaries +-scale/2
    w = (torch.randn(*shape, generator=_gen(sum(shape))) * 0.3).to(dtype)
    packed, scale = kernkit.ternary_quantize(w, per_row=per_row)
    w_q, s = ternary_quantize_ref(w, per_row)
    assert torch.equal(scale, s)
    assert torch.equal(kernkit.ternary_unpack(packed, shape), w_q)
    # weights exactly on the rounding boundaries: |w| / scale in {0.5, 1.5}, rounded half to even
    w2 = (torch.tensor([0.125, 0.375, -0.125, -0.375]).repeat(shape[0], shape[1] + 4)[:, : 4 * max(1, shape[1] // 4)])
    packed2, scale2 = kernkit.ternary_quantize(w2.to(dtype), per_row=per_row)
    assert torch.equal(scale2, torch.full_like(scale2, 0.25))
    expect = torch.tensor([0, 1, 0, -1], dtype=torch.int8).repeat(shape[0], w2.shape[1] // 4)
    assert torch.equal(kernkit.ternary_unpack(packed2, w2.shape), expect)
    # expanded weights (row stride 0): the same as materialised ones
    we = w[:1].expand(*shape)
    assert all(torch.equal(u, v) for u, v in zip(kernkit.ternary_quantize(we, per_row=per_row),
                                                 kernkit.ternary_quantize(we.contiguous(), per_row=per_row)))
    # strided weights: the same as contiguous ones
    wt = torch.randn(shape[1], shape[0], generator=_gen(3)).to(dtype).t()
    pt, st = kernkit.ternary_quantize(wt, per_row=per_row)
    pc, sc = kernkit.ternary_quantize(wt.contiguous(), per_row=per_row)
    assert torch.equal(pt, pc) and torch.equal(st, sc)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fused_quantizer_rejects_non_finite(bad):
    w = torch.randn(7, 300)
    w[5, 123] = bad
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        kernkit.ternary_quantize(w)
    layer = BitLinear(300, 7)
    with torch.no_grad():
        layer.weight.copy_(w)
    with pytest.raises(ValueError, match="NaN or inf"):
        layer(torch.randn(2, 300))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (6, 300), (33, 4097)], ids=str)
def test_backward_operands_are_exact(isa, shape, dtype):
    from kernkit.lowbit import _act_dequant_op, _dequant_op
    from kernkit.reference.lowbit import act_quant_ref

    M, K = shape
    g = _gen(M * K)
    x = (torch.randn(M, K, generator=g) * 4).to(dtype)
    x[0, 0] = 0.0
    xq, s = act_quant_ref(x)
    assert torch.equal(_act_dequant_op(x), xq.float() / s)
    assert torch.equal(_act_dequant_op(x[:1].expand(M, K)), _act_dequant_op(x[:1].expand(M, K).contiguous()))
    xs = torch.randn(M, 2 * K, generator=g).to(dtype)[:, ::2]  # strided rows
    xq, s = act_quant_ref(xs)
    assert torch.equal(_act_dequant_op(xs), xq.float() / s)
    assert torch.equal(_act_dequant_op(torch.zeros(M, K, dtype=dtype)), torch.zeros(M, K))
    for per_row in (False, True):
        w = torch.randn(M, K, generator=g)
        packed, scale = kernkit.ternary_quantize(w, per_row=per_row)
        dense = kernkit.ternary_unpack(packed, (M, K)).float() * (scale[:, None] if per_row else scale)
        assert torch.equal(_dequant_op(packed, scale, K), dense)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 70, 3), (17, 65, 300), (6, 64, 256), (7, 129, 257), (130, 200, 513),
                                   (100, 300, 0)], ids=str)
def test_backward_gemm(isa, shape):
    # the fp32 GEMM of the straight-through backward: every strided layout, panel tails in M, N and K
    # (K past one 256-deep slice); error vs fp64 within 3x torch's fp32 matmul error
    from kernkit.lowbit import _mm_op

    M, N, K = shape
    g = _gen(M + N + K)
    a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    exact = a.double() @ b.double()
    tol = 3 * (a @ b - exact).abs().max().item() + 1e-6
    for aa in (a, a.t().contiguous().t()):
        for bb in (b, b.t().contiguous().t(), torch.randn(K, 2 * N, generator=g)[:, ::2].copy_(b)):
            c = _mm_op(aa, bb)
            assert c.shape == (M, N) and c.is_contiguous()
            assert (c.double() - exact).abs().max().item() <= tol


# (M, N, K): row tails of every size after full 4-row tiles, N tails, and K with an odd
# number of 128-weight blocks after full 256-weight chunks (the half-chunk path); M >= 64: the float
# paths go through weight panels and the fp32 GEMM (several panels of 128 rows, a ragged last one)
SHAPES = [(1, 1, 1), (1, 17, 3), (3, 64, 17), (1, 70, 4095), (5, 33, 4096), (16, 40, 1000), (2, 3, 129),
          (11, 10, 300), (6, 8, 640), (7, 5, 2560), (64, 130, 300), (70, 257, 1000)]


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ternary_int8_is_bit_exact(isa, shape, dtype, per_row):
    M, N, K = shape
    g = _gen(M + N + K)
    w = torch.randn(N, K, generator=g)
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    packed, scale = kernkit.ternary_quantize(w, per_row=per_row)
    w_q, s = ternary_quantize_ref(w, per_row)
    for b in (None, bias):
        y = kernkit.ternary_linear(x, packed, scale, b)
        assert y.dtype == dtype and y.shape == (M, N)
        assert torch.equal(y, ternary_linear_ref(x, w_q, s, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ternary_float_activations(isa, shape, dtype):
    M, N, K = shape
    g = _gen(M * N + K)
    w, x = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g).to(dtype)
    packed, scale = kernkit.ternary_quantize(w)
    w_q, s = ternary_quantize_ref(w)
    y = kernkit.ternary_linear(x, packed, scale, act_bits=None)
    exact = (x.double() @ w_q.double().t()) * s.double()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.double(), exact, rtol=tol, atol=tol * max(1.0, K ** 0.5))


@pytest.mark.parametrize("binarize", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_binary_linear(isa, shape, binarize):
    M, N, K = shape
    g = _gen(M + 3 * N + K)
    w, x, b = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g), torch.randn(N, generator=g)
    packed, alpha = kernkit.binary_quantize(w)
    signs, a = binary_quantize_ref(w)
    y = kernkit.binary_linear(x, packed, alpha, b, binarize_input=binarize)
    exact = binary_linear_ref(x.double(), signs, a.double(), b.double(), binarize)
    torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-4)


def test_batched_input_shapes():
    g = _gen(5)
    w, x = torch.randn(20, 64, generator=g), torch.randn(2, 3, 64, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    y = kernkit.ternary_linear(x, packed, scale)
    assert y.shape == (2, 3, 20)
    torch.testing.assert_close(y, kernkit.ternary_linear(x.reshape(6, 64), packed, scale).reshape(2, 3, 20))


def test_worst_case_k_does_not_overflow(isa):
    # all weights +1 and activations at the int8 maximum: the sum is 127 * K
    K = 65536
    packed, scale = kernkit.ternary_quantize(torch.ones(2, K))
    x = torch.ones(1, K)
    y = kernkit.ternary_linear(x, packed, scale, act_bits=8)
    torch.testing.assert_close(y, torch.full((1, 2), float(K)))
    x = -torch.ones(1, K)
    torch.testing.assert_close(kernkit.ternary_linear(x, packed, scale), torch.full((1, 2), -float(K)))


def test_int32_lanes_are_flushed_beyond_a_million_weights(isa):
    # the kernels flush int32 lanes to int64 every 2^20 weights: check sums across that boundary,
    # for full row tiles and a tail row, with a half chunk at the end
    K = (1 << 20) + 300
    w = torch.ones(5, K)
    w[1] = -1
    packed, scale = kernkit.ternary_quantize(w)
    x = torch.ones(5, K)
    x[2] = -1
    y = kernkit.ternary_linear(x, packed, scale)
    expect = torch.full((5, 5), float(K))
    expect[:, 1] *= -1
    expect[2] *= -1
    assert torch.equal(y, expect)


def test_ternary_linear_ste_gradients():
    g = _gen(6)
    w, x = torch.randn(12, 40, generator=g), torch.randn(5, 40, generator=g, requires_grad=True)
    packed, scale = kernkit.ternary_quantize(w)
    b = torch.randn(12, generator=g, requires_grad=True)
    y = kernkit.ternary_linear(x, packed, scale, b)
    dy = torch.randn_like(y)
    y.backward(dy)
    w_deq = kernkit.ternary_unpack(packed, w.shape).float() * scale
    torch.testing.assert_close(x.grad, dy @ w_deq)
    torch.testing.assert_close(b.grad, dy.sum(0))


@pytest.mark.parametrize("sizes", [(6, 48, 24), (40, 300, 200), (3, 70, 130)], ids=str)  # (40, ...): kernkit's GEMM
def test_bitlinear_matches_emulation_forward_and_ste_gradients(sizes):
    M, K, N = sizes
    g = _gen(7)
    layer = BitLinear(K, N)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(N, K, generator=g) * 0.1)
        layer.bias.copy_(torch.randn(N, generator=g))
    x = torch.randn(M, K, generator=g, requires_grad=True)
    _check_bitlinear_vs_emulation(layer, x, torch.randn(M, N, generator=g))


def _check_bitlinear_vs_emulation(layer, x, dy):
    # forward and straight-through gradients of a BitLinear against the fake-quantise + F.linear emulation
    y = layer(x)
    xr = x.detach().clone().requires_grad_()
    wr = layer.weight.detach().clone().requires_grad_()
    br = layer.bias.detach().clone().requires_grad_()
    yr = bitlinear_emulated(xr, wr, br)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    y.backward(dy)
    yr.backward(dy)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, wr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, br.grad)


def test_tiny_mlp_with_bitlinear_trains():
    torch.manual_seed(0)
    X = torch.randn(256, 16)
    Y = (X[:, :1] * X[:, 1:2] > 0).float().squeeze(1).long()
    model = torch.nn.Sequential(BitLinear(16, 64), torch.nn.ReLU(), BitLinear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses[::10]


def test_bitlinear_to_inference_and_state_dict():
    g = _gen(8)
    lin = torch.nn.Linear(100, 30)
    layer = BitLinear.from_linear(lin)
    x = torch.randn(4, 100, generator=g)
    y_train = layer(x)
    layer.to_inference()
    assert layer.weight is None and layer.packed.dtype == torch.uint8
    torch.testing.assert_close(layer(x), y_train)
    sd = layer.state_dict()
    assert set(sd) == {"bias", "packed", "scale"}
    fresh = BitLinear(100, 30).to_inference()
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), y_train)
    binary = BitLinear.from_linear(lin, weight_bits=1, act_bits=1).to_inference()
    pb, alpha = kernkit.binary_quantize(lin.weight)
    torch.testing.assert_close(binary(x), kernkit.binary_linear(x, pb, alpha, lin.bias.detach(), binarize_input=True))


def test_opcheck_and_compile():
    from kernkit.lowbit import _binary_op, _ternary_op

    g = _gen(9)
    w, x = torch.randn(10, 70, generator=g), torch.randn(3, 70, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    torch.library.opcheck(_ternary_op, (x, packed, scale, None, 8))
    torch.library.opcheck(_ternary_op, (x.requires_grad_(), packed, scale, torch.randn(10), 0))
    pb, alpha = kernkit.binary_quantize(w)
    torch.library.opcheck(_binary_op, (x.detach(), pb, alpha, None, True))
    from kernkit.lowbit import _absmean_pack_op, _act_dequant_op, _dequant_op
    for per_row in (False, True):
        torch.library.opcheck(_absmean_pack_op, (w, per_row))
    torch.library.opcheck(_dequant_op, (packed, scale, 70))
    torch.library.opcheck(_act_dequant_op, (x.detach(),))
    from kernkit.lowbit import _mm_op
    torch.library.opcheck(_mm_op, (x.detach(), w.t()))
    f = torch.compile(lambda a: kernkit.ternary_linear(a, packed, scale).relu(), fullgraph=True)
    torch.testing.assert_close(f(x.detach()), kernkit.ternary_linear(x.detach(), packed, scale).relu())


@pytest.mark.parametrize("make, exc, match", [
    (lambda p, s: (torch.randn(2, 70), p[:, :-1], s), ValueError, "packed has shape"),
    (lambda p, s: (torch.randn(2, 300), p, s), ValueError, "packed has shape"),
    (lambda p, s: (torch.randn(2, 70), p.to(torch.int16), s), TypeError, "uint8"),
    (lambda p, s: (torch.randn(2, 70).to(torch.float64), p, s), TypeError, "x has dtype"),
    (lambda p, s: (torch.randn(2, 70), p, torch.ones(3)), ValueError, "scale must have"),
])
def test_bad_inputs(make, exc, match):
    packed, scale = kernkit.ternary_quantize(torch.randn(10, 70))
    x, p, s = make(packed, scale)
    with pytest.raises(exc, match=match):
        kernkit.ternary_linear(x, p, s)
    with pytest.raises(ValueError, match="act_bits"):
        kernkit.ternary_linear(torch.randn(2, 70), packed, scale, act_bits=4)


# --------------------------------------------------------------------------- CUDA kernels (GPU, or simt on CPU)

# (M, N, K): M = 1 (GEMV), 2..16 (GEMV, 4 rows per pass and a ragged last pass), > 16 (int8 tensor-core
# tiles of 64 x 64 with ragged edges); K tails inside a 128-weight block and several blocks.
CUDA_SHAPES = [(1, 1, 1), (1, 37, 300), (3, 9, 129), (7, 70, 256), (16, 5, 17), (17, 65, 300), (64, 64, 128),
               (130, 70, 513)]


def _kernels(gpu):
    return {k.split("<")[0] for k in gpu.session.kernels} if gpu.session else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_ternary_int8_cuda_is_bit_exact(gpu, shape, dtype):
    M, N, K = shape
    g = _gen(M + N + K)
    w = torch.randn(N, K, generator=g)
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    bias = torch.randn(N, generator=g)
    for per_row in (False, True):
        w_q, s = ternary_quantize_ref(w, per_row)
        packed = kernkit.ternary_pack(w_q).to(gpu.device)  # packed on the CPU, used on the device
        for b in (None, bias):
            y = kernkit.ternary_linear(x.to(gpu.device), packed, s.to(gpu.device),
                                       None if b is None else b.to(gpu.device))
            assert y.dtype == dtype and y.shape == (M, N) and y.device.type == torch.device(gpu.device).type
            assert torch.equal(y.cpu(), ternary_linear_ref(x, w_q, s, b))
    if gpu.session:
        want = {"act_quant_kernel", "ternary_gemv_kernel" if M <= 16 else "ternary_mma_kernel"}
        assert want <= _kernels(gpu)


def test_ternary_int8_cuda_layouts(gpu):
    # strided and batched activations, a packed weight at an odd byte offset (copied to 16-byte alignment)
    g = _gen(11)
    w = torch.randn(40, 300, generator=g)
    w_q, s = ternary_quantize_ref(w)
    packed = kernkit.ternary_pack(w_q)
    x = torch.randn(2, 19, 600, generator=g)[..., ::2]
    ref = ternary_linear_ref(x, w_q, s)
    dev = gpu.device
    assert torch.equal(kernkit.ternary_linear(x.to(dev), packed.to(dev), s.to(dev)).cpu(), ref)
    assert torch.equal(kernkit.ternary_linear(x[:, :1].to(dev), packed.to(dev), s.to(dev)).cpu(), ref[:, :1])
    odd = torch.empty(packed.numel() + 1, dtype=torch.uint8, device=dev)[1:].view(packed.shape)
    odd.copy_(packed.to(dev))
    assert torch.equal(kernkit.ternary_linear(x.to(dev), odd, s.to(dev)).cpu(), ref)


@pytest.mark.parametrize("M", [1, 17])
def test_ternary_int8_cuda_large_k_is_exact(gpu, M):
    # |sum| = 127 K at K = 65536 (int32 lanes / tensor-core accumulators, exact)
    K = 65536
    dev = gpu.device
    packed, scale = kernkit.ternary_quantize(torch.ones(2, K))
    x = torch.ones(M, K)
    x[-1] = -1
    y = kernkit.ternary_linear(x.to(dev), packed.to(dev), scale.to(dev)).cpu()
    expect = torch.full((M, 2), float(K))
    expect[-1] = -float(K)
    assert torch.equal(y, expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 37, 300), (5, 9, 129), (17, 20, 65), (70, 130, 257), (33, 70, 100)], ids=str)
def test_float_activations_cuda(gpu, shape, dtype):
    # ternary act_bits=None and binary without binarize_input: fp32 sums, error within 2x of the
    # same-dtype PyTorch product's; 16-bit x with M > 16 on tensor cores (x strided for K = 100:
    # rows not 16-byte aligned, element loads at the edges)
    M, N, K = shape
    g = _gen(M * N + K)
    w = torch.randn(N, K, generator=g)
    x = torch.randn(M, 2 * K if K == 100 else K, generator=g).to(dtype)[:, ::2 if K == 100 else 1]
    b = torch.randn(N, generator=g)
    dev = gpu.device
    w_q, s = ternary_quantize_ref(w)
    signs, a = binary_quantize_ref(w)
    cases = [
        (lambda: kernkit.ternary_linear(x.to(dev), kernkit.ternary_pack(w_q).to(dev), s.to(dev), b.to(dev),
                                        act_bits=None), w_q, s),
        (lambda: kernkit.binary_linear(x.to(dev), kernkit.binary_pack(signs).to(dev), a.to(dev), b.to(dev)), signs, a),
    ]
    for run, wsign, sc in cases:
        exact = (x.double() @ wsign.double().t()) * sc.double() + b.double()
        same = ((x @ wsign.to(dtype).t()).float() * sc + b).to(dtype)
        y = run()
        assert y.dtype == dtype and y.shape == (M, N)
        err = (y.cpu().double() - exact).abs().max().item()
        assert err <= 2 * (same.double() - exact).abs().max().item() + 1e-5 * exact.abs().max().item()
    if gpu.session:
        assert _kernels(gpu) == {"float_mma_kernel" if M > 16 and dtype != torch.float32 else "float_gemv_kernel"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 37, 300), (5, 9, 64), (20, 33, 1000)], ids=str)
def test_binary_xnor_cuda(gpu, shape, dtype):
    M, N, K = shape
    g = _gen(M + 3 * N + K)
    w, x, b = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g).to(dtype), torch.randn(N, generator=g)
    signs, a = binary_quantize_ref(w)
    dev = gpu.device
    y = kernkit.binary_linear(x.to(dev), kernkit.binary_pack(signs).to(dev), a.to(dev), b.to(dev),
                              binarize_input=True).cpu()
    # the integer part is exact; beta = mean|x| is an fp64 sum rounded once
    exact = binary_linear_ref(x.double(), signs, a.double(), b.double(), True)
    torch.testing.assert_close(y.double(), exact, rtol=2 ** -7 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)
    if gpu.session:
        assert {"binarize_kernel", "xnor_kernel"} <= _kernels(gpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (37, 300), (129, 260)], ids=str)
def test_quantizers_cuda_match_reference(gpu, shape, dtype):
    from kernkit.lowbit import _act_dequant_op, _dequant_op

    g = _gen(sum(shape))
    dev = gpu.device
    w = (torch.randn(*shape, generator=g) * 0.3).to(dtype)
    for per_row in (False, True):
        packed, scale = kernkit.ternary_quantize(w.to(dev), per_row=per_row)
        w_q, s = ternary_quantize_ref(w, per_row)
        assert torch.equal(scale.cpu(), s) and torch.equal(kernkit.ternary_unpack(packed, shape).cpu(), w_q)
        dense = w_q.float() * (s[:, None] if per_row else s)
        assert torch.equal(_dequant_op(packed, scale, shape[1]).cpu(), dense)
    pb, alpha = kernkit.binary_quantize(w.to(dev))
    signs, a = binary_quantize_ref(w)
    assert torch.equal(kernkit.binary_unpack(pb, shape).cpu(), signs) and torch.equal(alpha.cpu(), a)
    # strided weights, and x_q / s for the straight-through backward
    wt = w.t().contiguous().t()
    assert torch.equal(kernkit.ternary_quantize(wt.to(dev))[0].cpu(), kernkit.ternary_quantize(w.to(dev))[0].cpu())
    x = (torch.randn(*shape, generator=g) * 4).to(dtype)
    xq, xs = act_quant_ref(x)
    assert torch.equal(_act_dequant_op(x.to(dev)).cpu(), xq.float() / xs)
    if gpu.session:
        assert {"abs_row_sum_kernel", "absmean_scale_kernel", "ternary_pack_kernel", "ternary_dequant_kernel",
                "act_quant_dequant_kernel"} <= _kernels(gpu)


def test_quantizer_cuda_rejects_non_finite(gpu):
    w = torch.randn(7, 300)
    w[5, 123] = float("nan")
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        kernkit.ternary_quantize(w.to(gpu.device))
    w[5, 123] = float("inf")
    with pytest.raises(ValueError, match="w contains NaN or inf"):
        kernkit.ternary_quantize(w.to(gpu.device))


def test_bitlinear_trains_on_cuda_kernels(gpu):
    # forward through the CUDA kernels, straight-through backward with the CUDA dequantisers: the same
    # as the plain-PyTorch emulation
    g = _gen(7)
    layer = BitLinear(70, 20).to(gpu.device)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(20, 70, generator=g) * 0.1)
        layer.bias.copy_(torch.randn(20, generator=g))
    x = torch.randn(19, 70, generator=g).to(gpu.device).requires_grad_()
    _check_bitlinear_vs_emulation(layer, x, torch.randn(19, 20, generator=g).to(gpu.device))
    if gpu.session:
        assert {"abs_row_sum_kernel", "ternary_mma_kernel", "ternary_dequant_kernel",
                "act_quant_dequant_kernel"} <= _kernels(gpu)


@pytest.mark.cuda
def test_cuda_inputs_on_mixed_devices():
    packed, scale = kernkit.ternary_quantize(torch.randn(10, 70))
    x = torch.randn(2, 70, device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="device"):
        kernkit.ternary_linear(x, packed, scale.cuda())
    with pytest.raises((ValueError, RuntimeError), match="device"):
        kernkit.ternary_linear(x, packed.cuda(), scale)


def test_in_features_mismatch_raises():
    # 65 and 64 features share one 128-weight block (64-weight word for binary): only in_features tells them apart
    g = _gen(12)
    w = torch.randn(10, 64, generator=g)
    packed, scale = kernkit.ternary_quantize(w)
    pb, alpha = kernkit.binary_quantize(w)
    x65, x64 = torch.randn(3, 65, generator=g), torch.randn(3, 64, generator=g)
    with pytest.raises(ValueError, match="65 input features.*in_features=64"):
        kernkit.ternary_linear(x65, packed, scale, in_features=64)
    with pytest.raises(ValueError, match="65 input features.*in_features=64"):
        kernkit.binary_linear(x65, pb, alpha, in_features=64)
    with pytest.raises(TypeError, match="in_features must be a positive int"):
        kernkit.ternary_linear(x64, packed, scale, in_features=64.0)
    torch.testing.assert_close(kernkit.ternary_linear(x64, packed, scale, in_features=64),
                               kernkit.ternary_linear(x64, packed, scale))
    for layer in (BitLinear(64, 10), BitLinear(64, 10).to_inference(),
                  BitLinear(64, 10, weight_bits=1, act_bits=1).to_inference()):
        with pytest.raises(ValueError, match=r"expected \(\.\.\., 64\)"):
            layer(x65)
        assert layer(x64).shape == (3, 10)
    # a packed state dict loads into a fresh layer and keeps the check
    fresh = BitLinear(64, 10).to_inference()
    fresh.load_state_dict(BitLinear(64, 10).to_inference().state_dict())
    with pytest.raises(ValueError, match="expected"):
        fresh(x65)


# --------------------------------------------------------------------------- tq1.6: 5 ternary weights per byte

def test_tq16_every_byte_decodes_to_its_five_codes():
    # all 3^5 code patterns, each in every byte position of a block
    codes = torch.tensor([[(v // 3 ** (4 - i)) % 3 for i in range(5)] for v in range(243)])  # (243, 5)
    w_q = torch.zeros(243, 320, dtype=torch.int8)
    for i in range(5):
        w_q[:, 64 * i:64 * (i + 1)] = (codes[:, i:i + 1] - 1).to(torch.int8)
    packed = kernkit.ternary_pack(w_q, format="tq1.6")
    assert packed.shape == (243, 1, 64) and packed.dtype == torch.uint8
    v = torch.arange(243)
    assert torch.equal(packed[:, 0, 0].long(), (v * 256 + 242) // 243)  # the documented byte
    assert torch.equal(kernkit.ternary_unpack(packed, (243, 320)), w_q)


@pytest.mark.parametrize("K", [1, 17, 64, 319, 320, 321, 1000, 2560])
def test_tq16_round_trip_and_same_codes_as_tq2(K):
    g = _gen(K)
    w = torch.randn(7, K, generator=g)
    for per_row in (False, True):
        p2, s2 = kernkit.ternary_quantize(w, per_row=per_row)
        p16, s16 = kernkit.ternary_quantize(w, per_row=per_row, format="tq1.6")
        assert p16.shape == (7, (K + 319) // 320, 64)
        assert torch.equal(s16, s2)
        w_q = kernkit.ternary_unpack(p16, (7, K))
        assert torch.equal(w_q, kernkit.ternary_unpack(p2, (7, K)))
        assert torch.equal(kernkit.ternary_pack(w_q, format="tq1.6"), p16)
        assert 5 * p16.numel() >= w.numel() > 5 * (p16.numel() - 7 * 64)  # 1.6 bits per weight
    # padding codes are 1 (w = 0)
    pad = kernkit.ternary_unpack(p16, (7, p16.shape[1] * 320))[:, K:]
    assert bool((pad == 0).all())


TQ16_SHAPES = [(1, 1, 1), (1, 17, 3), (3, 64, 17), (2, 5, 320), (1, 9, 321), (5, 33, 4096), (7, 5, 2560),
               (1, 70, 1000), (4, 9, 959), (16, 40, 700)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", TQ16_SHAPES, ids=str)
def test_tq16_linear_is_bit_exact(isa, shape, dtype):
    M, N, K = shape
    g = _gen(M + 7 * N + K)
    w = torch.randn(N, K, generator=g)
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    for per_row in (False, True):
        packed, scale = kernkit.ternary_quantize(w, per_row=per_row, format="tq1.6")
        w_q, s = ternary_quantize_ref(w, per_row)
        for b in (None, bias):
            y = kernkit.ternary_linear(x, packed, scale, b)
            assert y.dtype == dtype and y.shape == (M, N)
            assert torch.equal(y, ternary_linear_ref(x, w_q, s, b))


def test_tq16_large_k_does_not_overflow(isa):
    # all codes 2 (w = +1) and x at the int8 extremes: the largest dot products, across the kernel's
    # int32 -> int64 flush (2048 blocks of 320 weights)
    K = 2048 * 320 + 700
    packed, scale = kernkit.ternary_quantize(torch.ones(3, K), format="tq1.6")
    p2, _ = kernkit.ternary_quantize(torch.ones(3, K))
    for sign in (1.0, -1.0):
        x = torch.full((2, K), sign)
        y = kernkit.ternary_linear(x, packed, scale)
        assert torch.equal(y, kernkit.ternary_linear(x, p2, scale))  # the exact dot 127 K, rescaled in fp32
        torch.testing.assert_close(y, torch.full((2, 3), sign * K), rtol=1e-6, atol=0)


def test_tq16_float_activations_batches_and_gradients():
    g = _gen(13)
    w, x = torch.randn(12, 333, generator=g), torch.randn(2, 3, 333, generator=g)
    p2, s = kernkit.ternary_quantize(w)
    p16, _ = kernkit.ternary_quantize(w, format="tq1.6")
    assert torch.equal(kernkit.ternary_linear(x, p16, s, act_bits=None), kernkit.ternary_linear(x, p2, s, act_bits=None))
    b = torch.randn(12, generator=g)
    grads = []
    for p in (p2, p16):
        xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = kernkit.ternary_linear(xr, p, s, br)
        y.backward(torch.ones_like(y) * torch.arange(12.0))
        grads.append((y.detach(), xr.grad, br.grad))
    for a, c in zip(*grads):
        assert torch.equal(a, c)
    w_deq = kernkit.ternary_unpack(p16, w.shape).float() * s
    torch.testing.assert_close(grads[1][1], (torch.ones(2, 3, 12) * torch.arange(12.0)) @ w_deq)


def test_tq16_opcheck_and_compile():
    from kernkit.lowbit import _ternary16_op

    g = _gen(14)
    w, x = torch.randn(10, 70, generator=g), torch.randn(3, 70, generator=g)
    packed, scale = kernkit.ternary_quantize(w, format="tq1.6")
    torch.library.opcheck(_ternary16_op, (x, packed, scale, None))
    torch.library.opcheck(_ternary16_op, (x.clone().requires_grad_(), packed, scale, torch.randn(10)))
    f = torch.compile(lambda a: kernkit.ternary_linear(a, packed, scale).relu(), fullgraph=True)
    torch.testing.assert_close(f(x), kernkit.ternary_linear(x, packed, scale).relu())


@pytest.mark.parametrize("make, exc, match", [
    (lambda p, s: (torch.randn(2, 70), p[:, :, :-1], s), ValueError, r"tq1\.6\) has shape"),
    (lambda p, s: (torch.randn(2, 400), p, s), ValueError, r"tq1\.6\) has shape"),
    (lambda p, s: (torch.randn(2, 70), p.to(torch.int16), s), TypeError, "uint8"),
    (lambda p, s: (torch.randn(2, 70), p.unsqueeze(0), s), ValueError, "3-D tq1.6"),
    (lambda p, s: (torch.randn(2, 70), p, torch.ones(3)), ValueError, "scale must have"),
])
def test_tq16_bad_inputs(make, exc, match):
    packed, scale = kernkit.ternary_quantize(torch.randn(10, 70), format="tq1.6")
    x, p, s = make(packed, scale)
    with pytest.raises(exc, match=match):
        kernkit.ternary_linear(x, p, s)
    with pytest.raises(ValueError, match="71 input features.*in_features=70"):
        kernkit.ternary_linear(torch.randn(2, 71), packed, scale, in_features=70)
    with pytest.raises(ValueError, match="format must be one of"):
        kernkit.ternary_quantize(torch.randn(10, 70), format="tq1")
    with pytest.raises(ValueError, match="format must be one of"):
        kernkit.ternary_pack(torch.zeros(2, 3), format=2)


def test_tq16_cuda_matches_cpu(gpu):
    # no tq1.6 CUDA kernel: the weights go through the tq2 one, with the same outputs
    g = _gen(15)
    w, x = torch.randn(9, 300, generator=g), torch.randn(3, 300, generator=g)
    packed, scale = kernkit.ternary_quantize(w, format="tq1.6")
    y = kernkit.ternary_linear(x.to(gpu.device), packed.to(gpu.device), scale.to(gpu.device))
    if gpu.session:
        assert "ternary_gemv_kernel" in _kernels(gpu)
    w_q, s = ternary_quantize_ref(w)
    assert torch.equal(y.cpu(), ternary_linear_ref(x, w_q, s))
