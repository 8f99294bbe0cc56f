"""Recurrences along time: the generic linear scan ``h_t = a_t * h_{t-1} + b_t``
(minGRU/minLSTM, HGRN, GateLoop), and the causal depthwise conv1d of Mamba
blocks, and Mamba's selective scan. CPU kernels for every ISA level; CUDA kernels for all of them
(fp32/bf16/fp16; verified under simt, not yet run on a GPU as of 0.1.0). Gradients flow to
every floating input, initial states included, and are deterministic."""

from __future__ import annotations

from typing import Optional

import torch

from . import _C
from . import _checks as chk
from ._native import advise_large, dtype_code, launch_args, ptr
from ._ops import call, define_op


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
    h = advise_large(torch.empty(b.shape, dtype=b.dtype, device=b.device))
    a3, b3 = _as_btc(a, B, T, C), _as_btc(b, B, T, C)
    h0c = None if h0 is None else h0.contiguous()
    launch = launch_args(b)
    chunk, carry = _scan_chunking(B, T, C, b, launch[1])
    _C.linear_scan(ptr(a3), _scan_strides(a3), ptr(b3), _scan_strides(b3), ptr(h), ptr(h0c), B, T, C, reverse,
                   dtype_code(b), chunk, ptr(carry), *launch)
    return h


_SCAN_ROWS_ENOUGH = 16384   # rows (batch x channel) that alone keep a GPU's threads busy


def _scan_chunking(B, T, C, b, device_code):
    """For the CUDA kernels (device_code != -1) with few rows and a long time axis: the chunk length
    that gives ~_SCAN_ROWS_ENOUGH (row, chunk) threads, and the carry workspace it needs."""
    rows = B * C
    if device_code == -1 or rows >= _SCAN_ROWS_ENOUGH or T < 128:
        return 0, None
    chunk = max(32, -(-T // max(1, _SCAN_ROWS_ENOUGH // rows)))
    if chunk >= T:
        return 0, None
    nchunks = -(-T // chunk)
    acc = torch.float64 if b.dtype == torch.float64 else torch.float32
    return chunk, torch.empty(2 * rows * nchunks, dtype=acc, device=b.device)


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
    return call(_linear_scan_op, a.expand(shape), b.expand(shape), initial_state, reverse)


# --------------------------------------------------------------------------- causal_conv1d

def _conv_impl(x, w, bias, init, seq_idx, silu, want_final):
    B, D, L = x.shape
    W = w.shape[1]
    y = advise_large(torch.empty_like(x))
    final = torch.empty((B, D, W - 1) if want_final else (0,), dtype=x.dtype, device=x.device)
    _C.causal_conv1d_fwd(ptr(x), ptr(w), ptr(bias), ptr(init), ptr(seq_idx), ptr(y), ptr(final) if want_final else 0,
                         B, D, L, W, silu, dtype_code(x), dtype_code(w), *launch_args(x))
    return y, final


def _conv_fake(x, w, bias, init, seq_idx, silu, want_final):
    B, D, _ = x.shape
    return torch.empty_like(x), x.new_empty((B, D, w.shape[1] - 1) if want_final else (0,))


def _conv_bwd_impl(dy, dfinal, x, w, bias, init, seq_idx, silu, need_dinit):
    B, D, L = x.shape
    W = w.shape[1]
    dy = dy.contiguous()
    dfinal = None if dfinal is None else dfinal.contiguous()
    dx, dw = advise_large(torch.empty_like(x)), torch.empty_like(w)
    dbias = torch.empty_like(bias) if bias is not None else x.new_empty(0)
    dinit = x.new_empty((B, D, W - 1)) if need_dinit else x.new_empty(0)
    _C.causal_conv1d_bwd(ptr(x), ptr(w), ptr(bias), ptr(init), ptr(seq_idx), ptr(dy), ptr(dfinal), ptr(dx), ptr(dw),
                         ptr(dbias) if bias is not None else 0, ptr(dinit) if need_dinit else 0,
                         B, D, L, W, silu, dtype_code(x), dtype_code(w), *launch_args(x))
    return dx, dw, dbias, dinit


def _conv_bwd_fake(dy, dfinal, x, w, bias, init, seq_idx, silu, need_dinit):
    B, D, _ = x.shape
    return (torch.empty_like(x), torch.empty_like(w), x.new_empty(bias.shape if bias is not None else (0,)),
            x.new_empty((B, D, w.shape[1] - 1) if need_dinit else (0,)))


_conv_bwd_op = define_op(
    "causal_conv1d_bwd(Tensor dy, Tensor? dfinal, Tensor x, Tensor w, Tensor? bias, Tensor? init, Tensor? seq_idx, "
    "bool silu, bool need_dinit) -> (Tensor, Tensor, Tensor, Tensor)",
    impl=_conv_bwd_impl,
    fake=_conv_bwd_fake,
)


def _conv_setup(ctx, inputs, output):
    x, w, bias, init, seq_idx, silu, want_final = inputs
    ctx.silu, ctx.want_final = silu, want_final
    ctx.save_for_backward(x, w, bias, init, seq_idx)


def _conv_backward(ctx, dy, dfinal):
    x, w, bias, init, seq_idx = ctx.saved_tensors
    need_dinit = init is not None and ctx.needs_input_grad[3]
    dx, dw, dbias, dinit = _conv_bwd_op(dy, dfinal if ctx.want_final else None, x, w, bias, init, seq_idx, ctx.silu,
                                        need_dinit)
    return dx, dw, (dbias if bias is not None else None), (dinit if need_dinit else None), None, None, None


_conv_op = define_op(
    "causal_conv1d_fwd(Tensor x, Tensor w, Tensor? bias, Tensor? init, Tensor? seq_idx, bool silu, bool want_final)"
    " -> (Tensor, Tensor)",
    impl=_conv_impl,
    fake=_conv_fake,
    backward=_conv_backward,
    setup_context=_conv_setup,
)


def _check_conv_filter(fn: str, x: torch.Tensor, D: int, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       activation: Optional[str]) -> int:
    """Checks a depthwise causal conv's weight ``(D, W)``, bias ``(D,)`` and activation against x; returns W."""
    chk.tensor(fn, "weight", weight)
    if weight.dim() != 2 or weight.shape[0] != D:
        raise ValueError(f"{fn}: weight must be ({D}, width), got {tuple(weight.shape)}")
    W = weight.shape[1]
    if not 1 <= W <= 64:
        raise ValueError(f"{fn}: kernel width must be in [1, 64], got {W}")
    chk.same_device(fn, "weight", weight, "x", x)
    if weight.dtype != x.dtype and not (weight.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
        raise TypeError(f"{fn}: weight dtype {weight.dtype} must match x ({x.dtype}), or be float32 for "
                        "float16/bfloat16 x")
    if bias is not None:
        chk.tensor(fn, "bias", bias)
        chk.same_device(fn, "bias", bias, "x", x)
        if bias.dtype != weight.dtype:
            raise TypeError(f"{fn}: bias dtype {bias.dtype} must match weight ({weight.dtype})")
        if bias.shape != (D,):
            raise ValueError(f"{fn}: bias must have shape ({D},), got {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"{fn}: activation must be None, 'silu' or 'swish', got {activation!r}")
    return W


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  activation: Optional[str] = None, initial_state: Optional[torch.Tensor] = None,
                  return_final_state: bool = False, seq_idx: Optional[torch.Tensor] = None):
    """Causal depthwise conv1d (causal-conv1d's ``causal_conv1d_fn``), with streaming states.

    ``y[b, d, t] = bias[d] + sum_k weight[d, k] * ext[b, d, t + k]`` where ``ext = [initial_state | x]``
    (``initial_state`` ``(B, D, W-1)``: the W-1 inputs before x; zeros by default), then SiLU if
    ``activation`` is ``"silu"``/``"swish"``. x ``(B, D, L)``, weight ``(D, W)`` with any W in 1..64,
    bias ``(D,)``. x and initial_state share one dtype (fp32, fp64, bf16, fp16); weight and bias
    have x's dtype, or are both float32 for bf16/fp16 x (Mamba's mixed precision: the sums run in
    fp32, y comes back in x's dtype and the weight/bias gradients in float32).

    ``seq_idx`` ``(B, L)`` int32/int64 (packed variable-length batches, causal-conv1d's semantics):
    input position j contributes to output t only if ``seq_idx[b, j] == seq_idx[b, t]``; it cannot be
    combined with ``initial_state`` or ``return_final_state`` (as in causal-conv1d).

    Returns ``y`` ``(B, D, L)``, or ``(y, final_state)`` with ``return_final_state=True`` —
    ``final_state`` ``(B, D, W-1)`` is the last W-1 inputs, the ``initial_state`` of the next chunk.
    """
    fn = "causal_conv1d"
    chk.tensor(fn, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    W = _check_conv_filter(fn, x, x.shape[1], weight, bias, activation)
    if initial_state is not None:
        chk.tensor(fn, "initial_state", initial_state)
        chk.same_device(fn, "initial_state", initial_state, "x", x)
        if initial_state.dtype != x.dtype:
            raise TypeError(f"{fn}: initial_state dtype {initial_state.dtype} must match x ({x.dtype})")
        if initial_state.shape != (x.shape[0], x.shape[1], W - 1):
            raise ValueError(f"{fn}: initial_state must have shape {(x.shape[0], x.shape[1], W - 1)}, "
                             f"got {tuple(initial_state.shape)}")
    if not isinstance(return_final_state, bool):
        raise TypeError(f"{fn}: return_final_state must be a bool")
    if seq_idx is not None:
        chk.tensor(fn, "seq_idx", seq_idx, dtypes=(torch.int32, torch.int64))
        chk.same_device(fn, "seq_idx", seq_idx, "x", x)
        if seq_idx.shape != (x.shape[0], x.shape[2]):
            raise ValueError(f"{fn}: seq_idx must have shape (batch, seqlen) = {(x.shape[0], x.shape[2])}, "
                             f"got {tuple(seq_idx.shape)}")
        if initial_state is not None or return_final_state:
            raise ValueError(f"{fn}: seq_idx cannot be combined with initial_state or return_final_state "
                             "(packed sequences have no single state to carry, as in causal-conv1d)")
        if chk.values_readable(seq_idx) and seq_idx.dtype == torch.int64 and \
                bool(((seq_idx < -2**31) | (seq_idx >= 2**31)).any()):
            raise ValueError(f"{fn}: seq_idx values must fit in int32")
        seq_idx = seq_idx.to(torch.int32).contiguous()
    y, final = call(_conv_op, x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
                    None if initial_state is None else initial_state.contiguous(), seq_idx, activation is not None,
                    return_final_state)
    return (y, final) if return_final_state else y


def _conv_update_impl(x, conv_state, w, bias, silu):
    B, D, L = x.shape
    y = torch.empty_like(x)
    _C.causal_conv1d_update(ptr(x), ptr(w), ptr(bias), ptr(conv_state), ptr(y), B, D, L, w.shape[1],
                            conv_state.shape[2], silu, dtype_code(x), dtype_code(w), *launch_args(x))
    return y


def _conv_update_fake(x, conv_state, w, bias, silu):
    return torch.empty_like(x)


_conv_update_op = define_op(
    "causal_conv1d_update_(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, bool silu) -> Tensor",
    impl=_conv_update_impl,
    fake=_conv_update_fake,
)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation: Optional[str] = None) -> torch.Tensor:
    """Decode step of :func:`causal_conv1d` against a rolling state (causal-conv1d's ``causal_conv1d_update``).

    x ``(B, D)`` (one new token) or ``(B, D, L)`` (a few); ``conv_state`` ``(B, D, S)`` with
    ``S >= W - 1``, contiguous, x's dtype: the last S inputs seen, **updated in place** (it becomes the
    last S entries of ``[conv_state | x]``; Mamba allocates ``S = W``). Outputs are those of
    ``causal_conv1d`` over ``[conv_state | x]`` with the state's last W-1 entries as the initial state,
    computed the same way (so a prefill by ``causal_conv1d(..., return_final_state=True)`` followed by
    updates gives the one long call's outputs). weight ``(D, W)``, bias ``(D,)``: x's dtype, or float32
    for bf16/fp16 x; ``activation`` None or ``"silu"``/``"swish"``. Returns y shaped like x.

    Inference only (the state is overwritten): with gradients enabled and an input that requires them,
    it raises; train with :func:`causal_conv1d` and ``initial_state``/``return_final_state``.
    """
    fn = "causal_conv1d_update"
    for name, t in (("x", x), ("conv_state", conv_state)):
        chk.tensor(fn, name, t)
    if x.dim() not in (2, 3):
        raise ValueError(f"{fn}: x must be (batch, dim) or (batch, dim, seqlen), got shape {tuple(x.shape)}")
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    B, D = x3.shape[:2]
    W = _check_conv_filter(fn, x, D, weight, bias, activation)
    if conv_state.dim() != 3 or conv_state.shape[:2] != (B, D) or conv_state.shape[2] < W - 1:
        raise ValueError(f"{fn}: conv_state must be (batch, dim, state_len) = ({B}, {D}, >= {W - 1}), "
                         f"got {tuple(conv_state.shape)}")
    if conv_state.dtype != x.dtype:
        raise TypeError(f"{fn}: conv_state dtype {conv_state.dtype} must match x ({x.dtype})")
    if not conv_state.is_contiguous():
        raise ValueError(f"{fn}: conv_state must be contiguous (it is updated in place)")
    chk.same_device(fn, "conv_state", conv_state, "x", x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, conv_state, weight, bias)):
        raise RuntimeError(f"{fn}: not differentiable (it overwrites conv_state); call it under torch.no_grad(), "
                           "or train with causal_conv1d(initial_state=..., return_final_state=True)")
    y = call(_conv_update_op, x3.contiguous(), conv_state, weight.contiguous(),
             None if bias is None else bias.contiguous(), activation is not None)
    return y.squeeze(-1) if x.dim() == 2 else y


# --------------------------------------------------------------------------- selective_scan

def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _ss_geometry(u, B, C):
    Bsz, Dm, L = u.shape
    var = [m.dim() == 4 for m in (B, C)]
    G = B.shape[1] if var[0] else (C.shape[1] if var[1] else 1)
    return Bsz, Dm, L, var, G


def _ss_fwd_impl(u, delta, A, B, C, D, z, delta_bias, softplus, h0, want_last):
    Bsz, Dm, L, var, G = _ss_geometry(u, B, C)
    N = A.shape[1]
    out = advise_large(torch.empty_like(u))
    last = torch.empty((Bsz, Dm, N) if want_last else (0,), dtype=_acc(u), device=u.device)
    _C.selective_scan_fwd(ptr(u), ptr(delta), ptr(z), ptr(B), ptr(C), var[0], var[1], G, ptr(A), ptr(D),
                          ptr(delta_bias), softplus, ptr(h0), ptr(out), ptr(last) if want_last else 0,
                          Bsz, Dm, N, L, dtype_code(u), *launch_args(u))
    return out, last


def _ss_fwd_fake(u, delta, A, B, C, D, z, delta_bias, softplus, h0, want_last):
    Bsz, Dm, _ = u.shape
    return torch.empty_like(u), u.new_empty((Bsz, Dm, A.shape[1]) if want_last else (0,), dtype=_acc(u))


def _opt_like(t, want):
    return torch.empty_like(t) if (t is not None and want) else None


def _ss_bwd_impl(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus, h0):
    Bsz, Dm, L, var, G = _ss_geometry(u, B, C)
    N = A.shape[1]
    dout = dout.contiguous()
    dlast = None if dlast is None else dlast.contiguous()
    du, ddelta, dA, dB, dC = (advise_large(torch.empty_like(t)) for t in (u, delta, A, B, C))
    dD, dz, dbias, dh0 = (_opt_like(t, True) for t in (D, z, delta_bias, h0))
    threads, device, stream = launch_args(u)
    work = None if device == -1 else torch.empty(  # CUDA: checkpoints and partials (fixed-order sums)
        max(1, _C.selective_scan_work_floats(Bsz, Dm, N, L, G, var[0], var[1])), dtype=torch.float32, device=u.device)
    _C.selective_scan_bwd(ptr(u), ptr(delta), ptr(z), ptr(B), ptr(C), var[0], var[1], G, ptr(A), ptr(D),
                          ptr(delta_bias), softplus, ptr(h0), ptr(dout), ptr(dlast), ptr(du), ptr(ddelta), ptr(dz),
                          ptr(dA), ptr(dB), ptr(dC), ptr(dD), ptr(dbias), ptr(dh0), Bsz, Dm, N, L, dtype_code(u),
                          threads, device, stream, ptr(work))
    empty = u.new_empty(0)
    return tuple(empty if t is None else t for t in (du, ddelta, dA, dB, dC, dD, dz, dbias, dh0))


def _ss_bwd_fake(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus, h0):
    outs = [torch.empty_like(t) for t in (u, delta, A, B, C)]
    outs += [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (D, z, delta_bias, h0)]
    return tuple(outs)


_ss_bwd_op = define_op(
    "selective_scan_bwd(Tensor dout, Tensor? dlast, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
    "Tensor? D, Tensor? z, Tensor? delta_bias, bool softplus, Tensor? h0) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    impl=_ss_bwd_impl,
    fake=_ss_bwd_fake,
)


def _ss_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, h0, want_last = inputs
    ctx.softplus, ctx.want_last = softplus, want_last
    ctx.present = [t is not None for t in (D, z, delta_bias, h0)]
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)


def _ss_backward(ctx, dout, dlast):
    u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
    grads = _ss_bwd_op(dout, dlast if ctx.want_last else None, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, h0)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    opt = [g if present else None for g, present in zip((dD, dz, dbias, dh0), ctx.present)]
    return du, ddelta, dA, dB, dC, opt[0], opt[1], opt[2], None, opt[3], None


_ss_op = define_op(
    "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
    "Tensor? delta_bias, bool softplus, Tensor? h0, bool want_last) -> (Tensor, Tensor)",
    impl=_ss_fwd_impl,
    fake=_ss_fwd_fake,
    backward=_ss_backward,
    setup_context=_ss_setup,
)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   initial_state: Optional[torch.Tensor] = None, return_last_state: bool = False):
    """Mamba's selective scan (mamba-ssm ``selective_scan_fn`` semantics and layout), with an initial state.

    Per batch b and channel d, with state ``x`` of N entries::

        dt_t = softplus(delta_t + delta_bias)   (softplus only if delta_softplus)
        x_t  = exp(dt_t * A) * x_{t-1} + dt_t * u_t * B_t,   x_{-1} = initial_state (or 0)
        y_t  = C_t . x_t + D * u_t;   out_t = y_t * silu(z_t)  (if z)

    Args:
        u, delta: ``(B, D, L)``; z: ``(B, D, L)`` gate; all one dtype (fp32, fp64, bf16, fp16).
        A: ``(D, N)`` (N <= 256); D, delta_bias: ``(D,)``; these and time-invariant B/C run in fp32
            (fp64 for fp64 inputs).
        B, C: time-invariant ``(D, N)``, or variable ``(B, N, L)``, or grouped ``(B, G, N, L)``
            (channel d uses group ``d // (D / G)``).
        initial_state: ``(B, D, N)``.

    Returns ``out`` ``(B, D, L)`` in u's dtype, or ``(out, last_state)`` with ``return_last_state``
    (``(B, D, N)``, fp32/fp64). Gradients flow to every floating input, deterministically.
    """
    fn = "selective_scan"
    chk.tensor(fn, "u", u)
    if u.dim() != 3:
        raise ValueError(f"{fn}: u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    Bsz, Dm, L = u.shape
    chk.tensor(fn, "delta", delta)
    if delta.shape != u.shape:
        raise ValueError(f"{fn}: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if delta.dtype != u.dtype:
        raise TypeError(f"{fn}: delta dtype {delta.dtype} must match u ({u.dtype})")
    chk.same_device(fn, "delta", delta, "u", u)
    chk.tensor(fn, "A", A)
    chk.same_device(fn, "A", A, "u", u)
    if A.dim() != 2 or A.shape[0] != Dm or not 1 <= A.shape[1] <= 256:
        raise ValueError(f"{fn}: A must be ({Dm}, N) with 1 <= N <= 256, got {tuple(A.shape)}")
    N = A.shape[1]
    acc = _acc(u)
    groups = None
    mats = []
    for name, m in (("B", B), ("C", C)):
        chk.tensor(fn, name, m)
        chk.same_device(fn, name, m, "u", u)
        if m.dim() == 2:
            if m.shape != (Dm, N):
                raise ValueError(f"{fn}: time-invariant {name} must be ({Dm}, {N}), got {tuple(m.shape)}")
            mats.append(m.to(acc).contiguous())
            continue
        if m.dim() == 3:
            m = m.unsqueeze(1)
        if m.dim() != 4 or m.shape[0] != Bsz or m.shape[2] != N or m.shape[3] != L:
            raise ValueError(f"{fn}: variable {name} must be ({Bsz}, {N}, {L}) or ({Bsz}, G, {N}, {L}), "
                             f"got {tuple(m.shape)}")
        G = m.shape[1]
        if G < 1 or Dm % G:
            raise ValueError(f"{fn}: {name} has {G} groups, which must divide the {Dm} channels")
        if groups is not None and groups != G:
            raise ValueError(f"{fn}: B and C must have the same number of groups")
        groups = G
        mats.append(m.to(u.dtype).contiguous())
    vecs = []
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            vecs.append(None)
            continue
        chk.tensor(fn, name, t)
        chk.same_device(fn, name, t, "u", u)
        if t.shape != (Dm,):
            raise ValueError(f"{fn}: {name} must have shape ({Dm},), got {tuple(t.shape)}")
        vecs.append(t.to(acc).contiguous())
    if z is not None:
        chk.tensor(fn, "z", z)
        if z.shape != u.shape or z.dtype != u.dtype:
            raise ValueError(f"{fn}: z must match u's shape {tuple(u.shape)} and dtype, got {tuple(z.shape)} {z.dtype}")
        chk.same_device(fn, "z", z, "u", u)
        z = z.contiguous()
    h0 = None
    if initial_state is not None:
        chk.tensor(fn, "initial_state", initial_state)
        chk.same_device(fn, "initial_state", initial_state, "u", u)
        if initial_state.shape != (Bsz, Dm, N):
            raise ValueError(f"{fn}: initial_state must have shape {(Bsz, Dm, N)}, got {tuple(initial_state.shape)}")
        h0 = initial_state.to(acc).contiguous()
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: {name} must be a bool")
    out, last = call(_ss_op, u.contiguous(), delta.contiguous(), A.to(acc).contiguous(), mats[0], mats[1], vecs[0], z,
                       vecs[1], delta_softplus, h0, return_last_state)
    return (out, last) if return_last_state else out
