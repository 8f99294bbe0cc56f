import pytest
import torch

import kernkit
from kernkit.reference import rms_norm_ref
from helpers import assert_within_ref_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = [(1, 1), (3, 17), (2, 5, 59), (127, 64), (4, 1000), (1, 4096), (33, 130)]


def _inputs(shape, dtype, device, weight="same", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    if weight is None:
        return x, None
    wd = torch.float32 if weight == "fp32" else dtype
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).to(wd).to(device)
    return x, w


def _check_forward(x, w, eps=1e-6):
    y = kernkit.rms_norm(x, w, eps)
    exact = rms_norm_ref(x.double(), None if w is None else w.double(), eps)
    same_dtype = rms_norm_ref(x, None if w is None else w.to(x.dtype), eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_within_ref_error(y, exact, same_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(isa, dtype, shape):
    _check_forward(*_inputs(shape, dtype, "cpu"))


@pytest.mark.parametrize("weight", [None, "fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_forward_weight_variants(isa, dtype, weight):
    if weight == "fp32" and dtype == torch.float32:
        weight = "same"
    _check_forward(*_inputs((7, 77), dtype, "cpu", weight))


def _grads(fn, x, w, dy):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    fn(x, w).backward(dy)
    return x.grad, (None if w is None else w.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 5, 59), (300, 64), (2, 1000), (40, 4097)])
@pytest.mark.parametrize("weight", ["same", None])
def test_backward_matches_reference(isa, dtype, shape, weight):
    x, w = _inputs(shape, dtype, "cpu", weight)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    dx, dw = _grads(kernkit.rms_norm, x, w, dy)
    ex_dx, ex_dw = _grads(rms_norm_ref, x.double(), None if w is None else w.double(), dy.double())
    rf_dx, rf_dw = _grads(rms_norm_ref, x, w, dy)
    assert_within_ref_error(dx, ex_dx, rf_dx, factor=3.0, what="dx")
    if w is not None:
        assert dw.dtype == w.dtype
        assert_within_ref_error(dw, ex_dw, rf_dw, factor=3.0, what="dw")


def test_backward_fp32_weight_with_bf16_input(isa):
    x, w = _inputs((9, 100), torch.bfloat16, "cpu", "fp32")
    dy = torch.randn(9, 100).to(torch.bfloat16)
    dx, dw = _grads(kernkit.rms_norm, x, w, dy)
    ex_dx, ex_dw = _grads(rms_norm_ref, x.double(), w.double(), dy.double())
    assert dw.dtype == torch.float32 and dx.dtype == torch.bfloat16
    torch.testing.assert_close(dw.double(), ex_dw, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dx.double(), ex_dx, rtol=2e-2, atol=2e-2)


def test_gradcheck_fp64(isa):
    x, w = _inputs((3, 11), torch.float64, "cpu")
    x.requires_grad_(); w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kernkit.rms_norm(a, b, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda a: kernkit.rms_norm(a, None, 1e-5), (x,))


@pytest.mark.parametrize("make", [lambda t: t.transpose(0, 1), lambda t: t[:, ::2], lambda t: t.expand(3, -1, -1)[1]],
                         ids=["transposed", "strided", "expanded"])
def test_strided_inputs_like_F_rms_norm(make):
    # F.rms_norm takes any layout: so does kernkit (one internal copy), with gradients in the input's layout.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(12, 34, generator=g, dtype=torch.float64)
    x = make(base).detach().requires_grad_()
    w = torch.randn(x.shape[-1] * 2, generator=g, dtype=torch.float64)[::2].detach().requires_grad_()
    y = kernkit.rms_norm(x, w, 1e-6)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = rms_norm_ref(xr, wr, 1e-6)
    torch.testing.assert_close(y, ref)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert x.stride() == make(base).stride()  # the caller's tensor is untouched


def test_noncontiguous_grad_output():
    # sum().backward() hands the backward an expanded (stride 0) gradient.
    x, w = _inputs((4, 33), torch.float32, "cpu")
    x.requires_grad_(); w.requires_grad_()
    kernkit.rms_norm(x, w).sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    rms_norm_ref(xr, wr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)


def test_only_weight_or_only_input_needs_grad():
    x, w = _inputs((5, 20), torch.float32, "cpu")
    w.requires_grad_()
    kernkit.rms_norm(x, w).square().sum().backward()
    wr = w.detach().clone().requires_grad_()
    rms_norm_ref(x, wr).square().sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)


def test_deterministic_across_threads_and_runs():
    x, w = _inputs((1000, 96), torch.float32, "cpu")
    dy = torch.randn(1000, 96)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            results.append(_grads(kernkit.rms_norm, x, w, dy) + (kernkit.rms_norm(x, w),))
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


def test_empty_and_zero_rows():
    x = torch.empty(0, 8)
    w = torch.ones(8, requires_grad=True)
    y = kernkit.rms_norm(x.requires_grad_(), w)
    assert y.shape == (0, 8)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(8))


def test_does_not_modify_inputs():
    x, w = _inputs((6, 50), torch.bfloat16, "cpu")
    xc, wc = x.clone(), w.clone()
    kernkit.rms_norm(x, w)
    assert torch.equal(x, xc) and torch.equal(w, wc)


def test_opcheck():
    from kernkit.norm import _rms_norm_bwd, _rms_norm_fwd

    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x, w = _inputs((4, 3, 40), dtype, "cpu")
        torch.library.opcheck(_rms_norm_fwd, (x, w, 1e-6))
        torch.library.opcheck(_rms_norm_fwd, (x, None, 1e-5))
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        torch.library.opcheck(_rms_norm_fwd, (xg, wg, 1e-6))
        _, rstd = _rms_norm_fwd(x, w, 1e-6)
        torch.library.opcheck(_rms_norm_bwd, (torch.randn_like(x), x, w, rstd, True))


def test_torch_compile_fullgraph():
    x, w = _inputs((8, 64), torch.float32, "cpu")
    x.requires_grad_(); w.requires_grad_()

    def f(a, b):
        return kernkit.rms_norm(a * 2, b).relu().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w)
    out.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    f(x, w).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


def test_meta_tensors():
    x = torch.empty(4, 7, 32, device="meta", dtype=torch.bfloat16)
    y = kernkit.rms_norm(x, torch.empty(32, device="meta", dtype=torch.bfloat16))
    assert y.shape == x.shape and y.device.type == "meta"


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: (torch.randn(3, 4).to(torch.int32), None), TypeError, "x has dtype int32"),
        (lambda: ([1.0, 2.0], None), TypeError, "x must be a torch.Tensor"),
        (lambda: (torch.randn(3, 4), torch.randn(5)), ValueError, "weight must have shape"),
        (lambda: (torch.randn(3, 4), torch.randn(4, 1)), ValueError, "weight must have shape"),
        (lambda: (torch.randn(3, 4), torch.randn(4, dtype=torch.float64)), TypeError, "weight dtype"),
        (lambda: (torch.randn(3, 4).to(torch.bfloat16), torch.randn(4, dtype=torch.float16)), TypeError, "weight dtype"),
        (lambda: (torch.tensor(1.0), None), ValueError, "at least one dimension"),
    ],
)
def test_bad_inputs(make, exc, match):
    x, w = make()
    with pytest.raises(exc, match=match):
        kernkit.rms_norm(x, w)


@pytest.mark.parametrize("eps, exc", [(float("nan"), ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                                      ("1e-6", TypeError), (None, TypeError)])
def test_bad_eps(eps, exc):
    with pytest.raises(exc, match="eps"):
        kernkit.rms_norm(torch.randn(2, 3), None, eps)


def test_native_layer_rejects_bad_calls():
    from kernkit import _C

    with pytest.raises(ValueError, match="dtype code"):
        _C.rms_norm_fwd(1, 0, 1, 1, 1, 1, 1e-6, 9, 0, 1, -1, 0)
    with pytest.raises(ValueError, match="null data pointer"):
        _C.rms_norm_fwd(0, 0, 0, 0, 2, 2, 1e-6, 0, 0, 1, -1, 0)
    with pytest.raises(ValueError, match="weight dtype"):
        _C.rms_norm_fwd(1, 1, 1, 1, 2, 2, 1e-6, 1, 0, 1, -1, 0)
    if not kernkit.info()["gpu_usable"]:
        # A CUDA launch without a CUDA build, or without a GPU, is an exception, not a crash.
        match = "without CUDA" if not kernkit.info()["cuda_compiled"] else "CUDA error"
        with pytest.raises(RuntimeError, match=match):
            _C.rms_norm_fwd(1, 0, 1, 1, 2, 2, 1e-6, 0, 0, 1, 0, 0)


# ----------------------------------------------------------------------- CUDA kernels (GPU, or simt on CPU)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 5, 59), (300, 64), (4, 1000), (70, 4097)])
def test_cuda_forward_backward(gpu, dtype, shape):
    x, w = _inputs(shape, dtype, gpu.device)
    _check_forward(x, w)
    dy = torch.randn(shape, dtype=torch.float64).to(dtype).to(gpu.device)
    dx, dw = _grads(kernkit.rms_norm, x, w, dy)
    ex_dx, ex_dw = _grads(rms_norm_ref, x.double(), w.double(), dy.double())
    rf_dx, rf_dw = _grads(rms_norm_ref, x, w, dy)
    assert_within_ref_error(dx, ex_dx, rf_dx, factor=3.0, what="dx")
    assert_within_ref_error(dw, ex_dw, rf_dw, factor=3.0, what="dw")
    if gpu.session:  # the CUDA kernels ran, not the CPU ones
        assert {k.split("<")[0] for k in gpu.session.kernels} == {
            "rms_norm_fwd_kernel", "rms_norm_dx_kernel", "rms_norm_dw_partial_kernel", "rms_norm_dw_reduce_kernel"}


@pytest.mark.parametrize("weight", [None, "fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_weight_variants(gpu, dtype, weight):
    x, w = _inputs((9, 77), dtype, gpu.device, weight)
    _check_forward(x, w)
    dy = torch.randn((9, 77), dtype=torch.float64).to(dtype).to(gpu.device)
    dx, dw = _grads(kernkit.rms_norm, x, w, dy)
    ex_dx, ex_dw = _grads(rms_norm_ref, x.double(), None if w is None else w.double(), dy.double())
    rf_dx, rf_dw = _grads(rms_norm_ref, x, w, dy)
    assert_within_ref_error(dx, ex_dx, rf_dx, factor=3.0, what="dx")
    if w is not None:
        assert dw.dtype == torch.float32
        assert_within_ref_error(dw, ex_dw, rf_dw.float(), factor=3.0, what="dw")


def test_cuda_gradcheck_opcheck_compile_determinism(gpu):
    from kernkit.norm import _rms_norm_fwd

    x, w = _inputs((3, 11), torch.float64, gpu.device)
    x.requires_grad_(); w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kernkit.rms_norm(a, b, 1e-5), (x, w))
    xb, wb = _inputs((4, 3, 40), torch.bfloat16, gpu.device)
    torch.library.opcheck(_rms_norm_fwd, (xb.requires_grad_(), wb.requires_grad_(), 1e-6))
    f = torch.compile(lambda a, b: kernkit.rms_norm(a, b).sum(), fullgraph=True, backend="aot_eager")
    f(xb, wb).backward()
    x1, w1 = _inputs((2048, 512) if gpu.kind == "cuda" else (200, 300), torch.bfloat16, gpu.device)
    dy = torch.randn_like(x1)
    g1 = _grads(kernkit.rms_norm, x1, w1, dy)
    g2 = _grads(kernkit.rms_norm, x1, w1, dy)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.cuda
def test_cuda_mismatched_devices():
    with pytest.raises(RuntimeError, match="weight is on"):
        kernkit.rms_norm(torch.randn(2, 3, device="cuda"), torch.randn(3))


# ----------------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 40),
    dim=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    with_weight=st.booleans(),
    eps=st.sampled_from([0.0, 1e-6, 1e-2]),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_property_matches_reference(rows, dim, dtype, with_weight, eps, scale):
    x = (torch.randn(rows, dim, dtype=torch.float64) * scale).to(dtype)
    w = torch.randn(dim, dtype=torch.float64).to(dtype) if with_weight else None
    if eps == 0.0:
        x[x == 0] = 1  # an all-zero row with eps=0 is 0/0 in every implementation
    y = kernkit.rms_norm(x, w, eps)
    exact = rms_norm_ref(x.double(), None if w is None else w.double(), eps)
    assert_within_ref_error(y, exact, rms_norm_ref(x, w, eps))


def test_torch_compile_inductor():
    x, w = _inputs((16, 96), torch.bfloat16, "cpu")
    f = torch.compile(lambda a, b: kernkit.rms_norm(a, b) * 2, fullgraph=True)
    torch.testing.assert_close(f(x, w), kernkit.rms_norm(x, w) * 2)
