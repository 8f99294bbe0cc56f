"""Fused RMSNorm: ``y = x / sqrt(mean(x**2, -1) + eps) * weight``."""

from __future__ import annotations

from typing import Optional

import torch

from . import _C
from . import _checks as chk
from ._native import advise_large, dtype_code, launch_args, ptr
from ._ops import call, define_op

_FN = "rms_norm"


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # fp64 inputs keep fp64 statistics (gradcheck); everything else uses fp32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(x: torch.Tensor) -> tuple[int, int]:
    dim = x.shape[-1]
    return (x.numel() // dim if dim else 0), dim


def _wdtype(x: torch.Tensor, weight: Optional[torch.Tensor]) -> int:
    return dtype_code(weight if weight is not None else x)


def _fwd_impl(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float):
    rows, dim = _rows(x)
    y = advise_large(torch.empty_like(x))
    rstd = torch.empty(x.shape[:-1], dtype=_acc_dtype(x), device=x.device)
    _C.rms_norm_fwd(ptr(x), ptr(weight), ptr(y), ptr(rstd), rows, dim, eps,
                    dtype_code(x), _wdtype(x, weight), *launch_args(x))
    return y, rstd


def _fwd_fake(x, weight, eps):
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=_acc_dtype(x))


def _bwd_impl(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], rstd: torch.Tensor, need_dw: bool):
    rows, dim = _rows(x)
    dy = dy.contiguous()  # gradients arriving from autograd may be expanded or strided
    dx = torch.empty_like(x)
    dw = dw_partial = None
    if need_dw and weight is not None:
        dw = torch.empty_like(weight)
        dw_partial = torch.empty((_C.rms_norm_dw_blocks(rows), dim), dtype=_acc_dtype(x), device=x.device)
    _C.rms_norm_bwd(ptr(dy), ptr(x), ptr(weight), ptr(rstd), ptr(dx), ptr(dw), ptr(dw_partial), rows, dim,
                    dtype_code(x), _wdtype(x, weight), *launch_args(x))
    if dw is None:
        dw = x.new_empty(0)
    elif rows == 0:
        dw.zero_()
    return dx, dw


def _bwd_fake(dy, x, weight, rstd, need_dw):
    dw = torch.empty_like(weight) if (need_dw and weight is not None) else x.new_empty(0)
    return torch.empty_like(x), dw


_rms_norm_bwd = define_op(
    "rms_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, bool need_dw) -> (Tensor, Tensor)",
    impl=_bwd_impl,
    fake=_bwd_fake,
)


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    need_dw = weight is not None and ctx.needs_input_grad[1]
    dx, dw = _rms_norm_bwd(dy, x, weight, rstd, need_dw)
    return dx, (dw if need_dw else None), None


_rms_norm_fwd = define_op(
    "rms_norm_fwd(Tensor x, Tensor? weight, float eps) -> (Tensor, Tensor)",
    impl=_fwd_impl,
    fake=_fwd_fake,
    backward=_backward,
    setup_context=_setup_context,
)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension (fused, one pass
    for statistics and one for the output), differentiable in ``x`` and ``weight``.

    Args:
        x: ``(..., D)`` float32, float64, float16 or bfloat16, any layout (a strided ``x`` is copied
            once, as ``F.rms_norm`` accepts any layout; its gradient comes back in ``x``'s layout), on
            CPU or CUDA.
        weight: optional ``(D,)`` scale, same dtype as ``x`` (or float32 for 16-bit ``x``), any stride.
        eps: added to the mean square before the square root (default 1e-6).

    Returns ``x * rsqrt(mean(x**2, -1, keepdim=True) + eps) * weight`` with
    ``x``'s shape and dtype; statistics are accumulated in fp32 (fp64 for fp64).

    Example::

        >>> x = torch.randn(2, 5, 64); w = torch.ones(64)
        >>> kernkit.rms_norm(x, w).shape
        torch.Size([2, 5, 64])
    """
    chk.tensor(_FN, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{_FN}: x must have at least one dimension, got a 0-d tensor")
    x = x.contiguous()  # no-op for contiguous x; autograd returns dx in the caller's layout
    eps = chk.finite_float(_FN, "eps", eps, min_value=0.0)
    if weight is not None:
        chk.tensor(_FN, "weight", weight)
        chk.same_device(_FN, "weight", weight, "x", x)
        if weight.shape != x.shape[-1:]:
            raise ValueError(f"{_FN}: weight must have shape ({x.shape[-1]},) to match x's last dimension, "
                             f"got {tuple(weight.shape)}")
        if weight.dtype != x.dtype and not (weight.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
            raise TypeError(f"{_FN}: weight dtype {weight.dtype} must match x ({x.dtype}), or be float32 for "
                            f"float16/bfloat16 x")
        weight = weight.contiguous()
    return call(_rms_norm_fwd, x, weight, eps)[0]
