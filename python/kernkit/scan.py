"""Recurrences along time: the generic linear scan ``h_t = a_t * h_{t-1} + b_t``
(minGRU/minLSTM, HGRN, GateLoop), and the causal depthwise conv1d of Mamba
blocks. CPU kernels for every ISA level; CUDA comes later. Gradients flow to
every floating input, initial states included, and are deterministic."""

from __future__ import annotations

from typing import Optional

import torch

from . import _C
from . import _checks as chk
from ._native import dtype_code, launch_args, ptr
from ._ops import define_op


def _no_cuda(fn, name, t):
    if t.device.type == "cuda":
        raise RuntimeError(f"{fn}: {name} is a CUDA tensor; kernkit's scan kernels run on CPU only so far "
                           "(the CUDA kernels are not implemented yet)")


# --------------------------------------------------------------------------- linear_scan

def _as_btc(t: torch.Tensor, B: int, T: int, C: int) -> torch.Tensor:
    """(B, T, C) view whose channel stride is 0 or 1 (copies only when it must)."""
    t3 = t.reshape(B, T, C)
    return t3 if t3.stride(2) in (0, 1) or C <= 1 else t3.contiguous()


def _scan_strides(t3):
    cs = t3.stride(2) if t3.shape[2] > 1 else 1
    return (t3.stride(0), t3.stride(1), cs)


def _linear_scan_impl(a, b, h0, reverse):
    B, T = b.shape[0], b.shape[1]
    C = b[0, 0].numel() if B and T else 0
    h = torch.empty(b.shape, dtype=b.dtype, device=b.device)
    a3, b3 = _as_btc(a, B, T, C), _as_btc(b, B, T, C)
    h0c = None if h0 is None else h0.contiguous()
    _C.linear_scan(ptr(a3), _scan_strides(a3), ptr(b3), _scan_strides(b3), ptr(h), ptr(h0c), B, T, C, reverse,
                   dtype_code(b), *launch_args(b))
    return h


def _linear_scan_fake(a, b, h0, reverse):
    return torch.empty(b.shape, dtype=b.dtype, device=b.device)


def _linear_scan_setup(ctx, inputs, output):
    a, b, h0, reverse = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(a, h0, output)


def _linear_scan_backward(ctx, dh):
    a, h0, h = ctx.saved_tensors
    reverse = ctx.reverse
    dh = dh.contiguous()
    zero = torch.zeros_like(a[:, :1])
    first = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1).to(h.dtype)
    if not reverse:  # g_t = dh_t + a_{t+1} g_{t+1};  h_prev_t = h_{t-1}
        a_next = torch.cat([a[:, 1:], zero], 1)
        h_prev = torch.cat([first, h[:, :-1]], 1)
    else:            # g_t = dh_t + a_{t-1} g_{t-1};  h_prev_t = h_{t+1}
        a_next = torch.cat([zero, a[:, :-1]], 1)
        h_prev = torch.cat([h[:, 1:], first], 1)
    g = _linear_scan_op(a_next.expand_as(dh), dh, None, not reverse)
    da = g * h_prev
    dh0 = None
    if h0 is not None and ctx.needs_input_grad[2]:
        dh0 = (a[:, -1 if reverse else 0] * g[:, -1 if reverse else 0]).to(h0.dtype)
    return da, g, dh0, None


_linear_scan_op = define_op(
    "linear_scan(Tensor a, Tensor b, Tensor? h0, bool reverse) -> Tensor",
    impl=_linear_scan_impl,
    fake=_linear_scan_fake,
    backward=_linear_scan_backward,
    setup_context=_linear_scan_setup,
)


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial_state: Optional[torch.Tensor] = None, *,
                reverse: bool = False) -> torch.Tensor:
    """First-order linear recurrence ``h_t = a_t * h_{t-1} + b_t`` along dim 1.

    Args:
        a, b: ``(B, T, ...)`` tensors, broadcastable to one shape (e.g. a per-channel decay
            ``(1, T, C)`` or ``(B, T, 1)`` against a full ``b``). fp32, fp64, bf16, fp16 (same dtype);
            the state is carried in fp32 (fp64 for fp64).
        initial_state: ``h_{-1}``, shape ``(B, ...)`` (the trailing shape), default zeros.
        reverse: scan right to left, ``h_t = a_t * h_{t+1} + b_t`` (``initial_state`` is ``h_T``).

    Returns ``h`` with the broadcast shape of a and b, in their dtype.

    Example (minGRU): ``h = kernkit.linear_scan(1 - z, z * h_tilde)``.
    """
    fn = "linear_scan"
    chk.tensor(fn, "a", a)
    chk.tensor(fn, "b", b)
    _no_cuda(fn, "a", a)
    if a.dtype != b.dtype:
        raise TypeError(f"{fn}: a ({a.dtype}) and b ({b.dtype}) must have the same dtype")
    chk.same_device(fn, "b", b, "a", a)
    if not isinstance(reverse, bool):
        raise TypeError(f"{fn}: reverse must be a bool")
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"{fn}: a {tuple(a.shape)} and b {tuple(b.shape)} are not broadcastable") from None
    if len(shape) < 2:
        raise ValueError(f"{fn}: a and b need at least 2 dims (batch, time, ...), got shape {tuple(shape)}")
    if initial_state is not None:
        chk.tensor(fn, "initial_state", initial_state)
        chk.same_device(fn, "initial_state", initial_state, "a", a)
        want = (shape[0],) + tuple(shape[2:])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"{fn}: initial_state must have shape {want} (batch + trailing dims), "
                             f"got {tuple(initial_state.shape)}")
        if initial_state.dtype != b.dtype:
            raise TypeError(f"{fn}: initial_state dtype {initial_state.dtype} must match a/b ({b.dtype})")
    return _linear_scan_op(a.expand(shape), b.expand(shape), initial_state, reverse)


# --------------------------------------------------------------------------- causal_conv1d

def _conv_impl(x, w, bias, init, silu, want_final):
    B, D, L = x.shape
    W = w.shape[1]
    y = torch.empty_like(x)
    final = torch.empty((B, D, W - 1) if want_final else (0,), dtype=x.dtype, device=x.device)
    _C.causal_conv1d_fwd(ptr(x), ptr(w), ptr(bias), ptr(init), ptr(y), ptr(final) if want_final else 0,
                         B, D, L, W, silu, dtype_code(x), *launch_args(x))
    return y, final


def _conv_fake(x, w, bias, init, silu, want_final):
    B, D, _ = x.shape
    return torch.empty_like(x), x.new_empty((B, D, w.shape[1] - 1) if want_final else (0,))


def _conv_bwd_impl(dy, dfinal, x, w, bias, init, silu, need_dinit):
    B, D, L = x.shape
    W = w.shape[1]
    dy = dy.contiguous()
    dfinal = None if dfinal is None else dfinal.contiguous()
    dx, dw = torch.empty_like(x), torch.empty_like(w)
    dbias = torch.empty_like(bias) if bias is not None else x.new_empty(0)
    dinit = x.new_empty((B, D, W - 1)) if need_dinit else x.new_empty(0)
    _C.causal_conv1d_bwd(ptr(x), ptr(w), ptr(bias), ptr(init), ptr(dy), ptr(dfinal), ptr(dx), ptr(dw),
                         ptr(dbias) if bias is not None else 0, ptr(dinit) if need_dinit else 0,
                         B, D, L, W, silu, dtype_code(x), *launch_args(x))
    return dx, dw, dbias, dinit


def _conv_bwd_fake(dy, dfinal, x, w, bias, init, silu, need_dinit):
    B, D, _ = x.shape
    return (torch.empty_like(x), torch.empty_like(w), x.new_empty(bias.shape if bias is not None else (0,)),
            x.new_empty((B, D, w.shape[1] - 1) if need_dinit else (0,)))


_conv_bwd_op = define_op(
    "causal_conv1d_bwd(Tensor dy, Tensor? dfinal, Tensor x, Tensor w, Tensor? bias, Tensor? init, bool silu, "
    "bool need_dinit) -> (Tensor, Tensor, Tensor, Tensor)",
    impl=_conv_bwd_impl,
    fake=_conv_bwd_fake,
)


def _conv_setup(ctx, inputs, output):
    x, w, bias, init, silu, want_final = inputs
    ctx.silu, ctx.want_final = silu, want_final
    ctx.save_for_backward(x, w, bias, init)


def _conv_backward(ctx, dy, dfinal):
    x, w, bias, init = ctx.saved_tensors
    need_dinit = init is not None and ctx.needs_input_grad[3]
    dx, dw, dbias, dinit = _conv_bwd_op(dy, dfinal if ctx.want_final else None, x, w, bias, init, ctx.silu,
                                        need_dinit)
    return dx, dw, (dbias if bias is not None else None), (dinit if need_dinit else None), None, None


_conv_op = define_op(
    "causal_conv1d_fwd(Tensor x, Tensor w, Tensor? bias, Tensor? init, bool silu, bool want_final)"
    " -> (Tensor, Tensor)",
    impl=_conv_impl,
    fake=_conv_fake,
    backward=_conv_backward,
    setup_context=_conv_setup,
)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  activation: Optional[str] = None, initial_state: Optional[torch.Tensor] = None,
                  return_final_state: bool = False):
    """Causal depthwise conv1d (causal-conv1d's ``causal_conv1d_fn``), with streaming states.

    ``y[b, d, t] = bias[d] + sum_k weight[d, k] * ext[b, d, t + k]`` where ``ext = [initial_state | x]``
    (``initial_state`` ``(B, D, W-1)``: the W-1 inputs before x; zeros by default), then SiLU if
    ``activation`` is ``"silu"``/``"swish"``. x ``(B, D, L)``, weight ``(D, W)`` with any W in 1..64,
    bias ``(D,)``; all one dtype (fp32, fp64, bf16, fp16).

    Returns ``y`` ``(B, D, L)``, or ``(y, final_state)`` with ``return_final_state=True`` —
    ``final_state`` ``(B, D, W-1)`` is the last W-1 inputs, the ``initial_state`` of the next chunk.
    """
    fn = "causal_conv1d"
    chk.tensor(fn, "x", x)
    chk.tensor(fn, "weight", weight)
    _no_cuda(fn, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"{fn}: weight must be ({x.shape[1]}, width), got {tuple(weight.shape)}")
    W = weight.shape[1]
    if not 1 <= W <= 64:
        raise ValueError(f"{fn}: kernel width must be in [1, 64], got {W}")
    for name, t in (("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        if t is None:
            continue
        chk.tensor(fn, name, t)
        chk.same_device(fn, name, t, "x", x)
        if t.dtype != x.dtype:
            raise TypeError(f"{fn}: {name} dtype {t.dtype} must match x ({x.dtype})")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"{fn}: bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    if initial_state is not None and initial_state.shape != (x.shape[0], x.shape[1], W - 1):
        raise ValueError(f"{fn}: initial_state must have shape {(x.shape[0], x.shape[1], W - 1)}, "
                         f"got {tuple(initial_state.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"{fn}: activation must be None, 'silu' or 'swish', got {activation!r}")
    if not isinstance(return_final_state, bool):
        raise TypeError(f"{fn}: return_final_state must be a bool")
    y, final = _conv_op(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
                        None if initial_state is None else initial_state.contiguous(), activation is not None,
                        return_final_state)
    return (y, final) if return_final_state else y
