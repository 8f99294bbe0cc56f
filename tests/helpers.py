"""Tolerance rule from the anchors (flash-attn's): the kernel's error against a
high-precision reference may be at most `factor` x the error of the same
computation done by plain PyTorch in the kernel's dtype (2x forward, 3x
gradients), plus a small absolute floor for results that are exact in both."""

import torch

FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_within_ref_error(out, exact, same_dtype_ref, *, factor=2.0, what="output"):
    assert out.shape == exact.shape, f"{what}: shape {tuple(out.shape)} != {tuple(exact.shape)}"
    assert not torch.isnan(out).any() or torch.isnan(exact).any(), f"{what}: NaN in output"
    err = max_err(out, exact)
    ref_err = max_err(same_dtype_ref, exact)
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    bound = factor * ref_err + FLOOR[out.dtype] * scale
    assert err <= bound, f"{what}: max error {err:.3g} > {factor} x reference error {ref_err:.3g} (+floor) = {bound:.3g}"


def on_cpu_kernels(fn):
    """Inside the gpu fixture's simt() block: runs fn on kernkit's CPU kernels (the reference side)."""
    from kernkit import _native

    saved, _native.simt_session = _native.simt_session, None
    try:
        return fn()
    finally:
        _native.simt_session = saved


def check_module_on_cuda_kernels(module, x, device, *, rtol=1e-4, atol=1e-5, grad_rtol=1e-4, grad_atol=1e-4):
    """A module's output and parameter gradients (loss: sum of squares of its first output) through the
    CUDA kernels on `device` (the gpu fixture's) equal those through the CPU kernels."""
    import copy

    first = lambda out: out[0] if isinstance(out, tuple) else out
    cpu_mod, dev_mod = copy.deepcopy(module), copy.deepcopy(module).to(device)

    def reference():
        out = first(cpu_mod(x))
        out.square().sum().backward()
        return out

    ref = on_cpu_kernels(reference)
    y = first(dev_mod(x.to(device)))
    y.square().sum().backward()
    torch.testing.assert_close(y.cpu(), ref.detach(), rtol=rtol, atol=atol)
    for (name, p), (_, q) in zip(dev_mod.named_parameters(), cpu_mod.named_parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=grad_rtol, atol=grad_atol, msg=name)
