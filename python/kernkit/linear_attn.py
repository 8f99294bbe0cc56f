"""Chunked linear attention with a log-space decay gate — plain linear attention,
RetNet retention, Lightning attention, simple GLA / Mamba-2-style scalar gates and
GLA vector gates — with initial/final states, packed variable-length batches and a
recurrent decode step (flash-linear-attention's names and ``(B, T, H, K)`` layout):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t

CPU kernels for every ISA level (AVX512_BF16 dot products for bf16 inputs) and CUDA kernels
(tensor cores for bf16/fp16, chunks of at most 64 rows; csrc/linear_attn/cuda). Gradients flow to
q, k, v, g and the initial state."""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import _C
from . import _checks as chk
from ._native import advise_large, dtype_code, launch_args, ptr, uses_cuda_kernels
from ._ops import _eager_plain, call, define_op
from .reference.linear_attn import retnet_decay as _retnet_decay

_GATE_NONE, _GATE_SCALAR, _GATE_VECTOR = 0, 1, 2


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gate_code(g):
    return _GATE_NONE if g is None else (_GATE_VECTOR if g.dim() == 4 else _GATE_SCALAR)


def _gate_strides(g):
    if g is None:
        return (0, 0, 0)
    if g.dim() == 1:                   # per-head constant
        return (0, 0, g.stride(0))
    return (g.stride(0), g.stride(1), g.stride(2))


def _sizes(q, v, cu):
    B, T, H, K = q.shape
    N = B if cu is None else cu.numel() - 1
    return N, [N, T, H, K, v.shape[-1]]


def _bth(t):
    return tuple(t.stride()[:3])



_CUDA_MAX_CHUNK = 64


def _cuda_plan(q, v, cu, chunk):
    """What the CUDA kernels need besides the inputs: their chunk size (<= 64); with packed
    sequences the first chunk of each sequence and the sequence of each chunk (one host sync for
    their total); [max chunks per sequence, total chunks]; fp32 scratch for the state entering
    every chunk."""
    C = min(chunk, _CUDA_MAX_CHUNK)
    B, T, H, K = q.shape
    off = seq = None
    if cu is None:
        max_chunks = (T + C - 1) // C
        total = B * max_chunks
    else:
        counts = ((cu[1:] - cu[:-1] + C - 1) // C).to(torch.int32)
        off = torch.zeros(cu.numel(), dtype=torch.int32, device=cu.device)
        off[1:] = counts.cumsum(0)
        total, max_chunks = torch.stack([off[-1], counts.max()]).tolist() if counts.numel() else (0, 0)
        seq = torch.repeat_interleave(torch.arange(counts.numel(), dtype=torch.int32, device=cu.device), counts,
                                      output_size=total)
    states = torch.empty(max(total, 1) * H * K * v.shape[-1], dtype=torch.float32, device=q.device)
    return C, off, seq, [max_chunks, total], states


# --------------------------------------------------------------------------- chunked op

def _fwd_impl(q, k, v, g, h0, cu, scale, chunk, want_final):
    N, dims = _sizes(q, v, cu)
    B, T, H, K = q.shape
    o = advise_large(torch.empty(B, T, H, dims[4], dtype=q.dtype, device=q.device))
    ht = torch.empty((N, H, K, dims[4]) if want_final else (0,), dtype=_acc_dtype(q.dtype), device=q.device)
    if T == 0:  # nothing to run (and no data pointers): states pass through
        if want_final:
            ht.copy_(h0) if h0 is not None else ht.zero_()
        return o, ht
    states = off = seq = None
    counts = [0, 0]
    if uses_cuda_kernels(q):
        chunk, off, seq, counts, states = _cuda_plan(q, v, cu, chunk)
    _C.linear_attn_fwd(ptr(q), _bth(q), ptr(k), _bth(k), ptr(v), _bth(v), ptr(o), _gate_code(g), ptr(g),
                       _gate_strides(g), ptr(h0), ptr(ht) if want_final else 0, ptr(cu), dims, scale, chunk,
                       ptr(states), ptr(off), ptr(seq), counts, dtype_code(q), *launch_args(q))
    return o, ht


def _fwd_fake(q, k, v, g, h0, cu, scale, chunk, want_final):
    B, T, H, K = q.shape
    N = B if cu is None else cu.shape[0] - 1
    V = v.shape[-1]
    return (q.new_empty(B, T, H, V),
            q.new_empty((N, H, K, V) if want_final else (0,), dtype=_acc_dtype(q.dtype)))


def _bwd_impl(do, dht, q, k, v, g, h0, cu, scale, chunk, need_dg, need_dh0):
    N, dims = _sizes(q, v, cu)
    B, T, H, K = q.shape
    do = do.contiguous()
    dht = None if dht is None else dht.contiguous()
    acc = _acc_dtype(q.dtype)
    dq, dk, dv = (advise_large(torch.empty(t.shape, dtype=q.dtype, device=q.device)) for t in (q, k, v))
    dg_shape = (B, T, H, K) if (g is not None and g.dim() == 4) else (B, T, H)
    dg = torch.empty(dg_shape if need_dg else (0,), dtype=acc, device=q.device)
    dh0 = torch.empty((N, H, K, dims[4]) if need_dh0 else (0,), dtype=acc, device=q.device)
    if T == 0:
        if need_dh0:
            dh0.copy_(dht) if dht is not None else dh0.zero_()
        return dq, dk, dv, dg, dh0
    states = dstates = off = seq = None
    counts = [0, 0]
    if uses_cuda_kernels(q):
        chunk, off, seq, counts, states = _cuda_plan(q, v, cu, chunk)
        dstates = torch.empty_like(states)
    _C.linear_attn_bwd(ptr(q), _bth(q), ptr(k), _bth(k), ptr(v), _bth(v), _gate_code(g), ptr(g), _gate_strides(g),
                       ptr(h0), ptr(cu), dims, scale, chunk, ptr(states), ptr(dstates), ptr(off), ptr(seq), counts,
                       ptr(do), ptr(dht), ptr(dq), ptr(dk), ptr(dv),
                       ptr(dg) if need_dg else 0, ptr(dh0) if need_dh0 else 0, dtype_code(q), *launch_args(q))
    return dq, dk, dv, dg, dh0


def _bwd_fake(do, dht, q, k, v, g, h0, cu, scale, chunk, need_dg, need_dh0):
    B, T, H, K = q.shape
    N = B if cu is None else cu.shape[0] - 1
    acc = _acc_dtype(q.dtype)
    dg_shape = (B, T, H, K) if (g is not None and g.dim() == 4) else (B, T, H)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(dg_shape if need_dg else (0,), dtype=acc),
            q.new_empty((N, H, K, v.shape[-1]) if need_dh0 else (0,), dtype=acc))


_bwd_op = define_op(
    "linear_attn_bwd(Tensor do, Tensor? dht, Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? h0, "
    "Tensor? cu_seqlens, float scale, int chunk, bool need_dg, bool need_dh0) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    impl=_bwd_impl,
    fake=_bwd_fake,
)


def _setup(ctx, inputs, output):
    q, k, v, g, h0, cu, scale, chunk, want_final = inputs
    ctx.scale, ctx.chunk, ctx.want_final = scale, chunk, want_final
    ctx.save_for_backward(q, k, v, g, h0, cu)


def _backward(ctx, do, dht):
    q, k, v, g, h0, cu = ctx.saved_tensors
    need_dg = g is not None and ctx.needs_input_grad[3]
    need_dh0 = h0 is not None and ctx.needs_input_grad[4]
    if do is None:
        do = torch.zeros(q.shape[:3] + v.shape[-1:], dtype=q.dtype, device=q.device)
    dq, dk, dv, dg, dh0 = _bwd_op(do, dht if ctx.want_final else None, q, k, v, g, h0, cu, ctx.scale, ctx.chunk,
                                  need_dg, need_dh0)
    if need_dg and g.dim() == 1:
        dg = dg.sum((0, 1), dtype=torch.float64).to(g.dtype)  # many terms: sum in double
    return dq, dk, dv, (dg if need_dg else None), (dh0 if need_dh0 else None), None, None, None, None


_fwd_op = define_op(
    "linear_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? h0, Tensor? cu_seqlens, float scale, "
    "int chunk, bool want_final) -> (Tensor, Tensor)",
    impl=_fwd_impl,
    fake=_fwd_fake,
    backward=_backward,
    setup_context=_setup,
)


# --------------------------------------------------------------------------- decode step

def _step_impl(q, k, v, g, state, scale, new_state=None):
    # q, k (B, H, K), v (B, H, V); the eager fast path also passes their (B, 1, H, .) forms
    B, H, K, V = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    o = v.new_empty(v.shape)
    if new_state is None:
        new_state = torch.empty(B, H, K, V, dtype=state.dtype, device=q.device)
    gbs, ghs = (0, 0) if g is None else ((0, g.stride(0)) if g.dim() == 1 else (g.stride(0), g.stride(1)))
    _C.linear_attn_step(ptr(q), ptr(k), ptr(v), _GATE_NONE if g is None else (_GATE_VECTOR if g.dim() == 3 else
                        _GATE_SCALAR), ptr(g), gbs, ghs, ptr(state), ptr(o), ptr(new_state), [B, H, K, V], scale,
                        dtype_code(q), *launch_args(q))
    return o, new_state


def _step_fake(q, k, v, g, state, scale):
    B, H, K = q.shape
    return q.new_empty(B, H, v.shape[-1]), torch.empty_like(state)


_step_op = define_op(
    "linear_attn_step(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor state, float scale) -> (Tensor, Tensor)",
    impl=_step_impl,
    fake=_step_fake,
)


def _step_inplace_impl(q, k, v, g, state, scale):
    return _step_impl(q, k, v, g, state, scale, new_state=state)[0]  # each state element is read, then written


def _step_inplace_fake(q, k, v, g, state, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])


_step_inplace_op = define_op(
    "linear_attn_step_(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor(a!) state, float scale) -> Tensor",
    impl=_step_inplace_impl,
    fake=_step_inplace_fake,
)


# --------------------------------------------------------------------------- checks

def _check_qkv(fn, q, k, v, ndim):
    for name, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(fn, name, t)
        if t.dim() != ndim:
            raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
        chk.same_device(fn, name, t, "q", q)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{fn}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"{fn}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{fn}: v must match q in every dim but the last: q {tuple(q.shape)}, v {tuple(v.shape)}")
    K, V = q.shape[-1], v.shape[-1]
    if not (1 <= K <= 256 and 1 <= V <= 256):
        raise ValueError(f"{fn}: head dims must be in [1, 256], got K={K}, V={V}")
    if q.dtype == torch.float64 and uses_cuda_kernels(q):
        raise TypeError(f"{fn}: float64 runs on the CPU only (the CUDA kernels take float32, bfloat16, float16)")


def _check_gate_values(fn, g):
    if not chk.values_readable(g):
        return
    if not bool(((g <= 0) & (g > float("-inf"))).all()):
        bad = "NaN" if bool(g.isnan().any()) else ("-inf" if bool(g.isneginf().any()) else f"max {float(g.max()):.4g}")
        raise ValueError(f"{fn}: g is a log-space decay and must be finite and <= 0 everywhere (got {bad}; a "
                         "full reset is a large negative g such as -1e4)")


def _scale_of(fn, scale, K):
    if scale is None:
        return K ** -0.5
    return chk.finite_float(fn, "scale", scale)


def _check_state(fn, name, s, want_shape, acc, q, any_float=False):
    chk.tensor(fn, name, s)
    chk.same_device(fn, name, s, "q", q)
    if tuple(s.shape) != tuple(want_shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(want_shape)} (N, H, K, V), got {tuple(s.shape)}")
    if s.dtype != acc and not any_float:
        raise TypeError(f"{fn}: {name} must be {str(acc).replace('torch.', '')} (states are kept in "
                        f"{'float64 for float64 inputs' if acc == torch.float64 else 'float32'}), got {s.dtype}")


# --------------------------------------------------------------------------- public API

def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None, *,
                scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, chunk_size: int = 64):
    """Causal linear attention with a log-space decay, in chunks.

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; K, V up to 256; fp32, bf16, fp16 (fp64 runs a
            slow exact token loop for gradcheck). Any strides with a contiguous last dim.
        g: log decay, ``<= 0`` everywhere: ``None`` (plain linear attention), ``(H,)`` per-head constant
            (RetNet / Lightning attention; see :func:`retnet_decay`), ``(B, T, H)`` per-step scalar gate
            (simple GLA, Mamba-2 style), or ``(B, T, H, K)`` per-step vector gate (GLA). Differentiable.
        scale: multiplies ``q S`` (default ``K ** -0.5``).
        initial_state: ``(N, H, K, V)``, N = B or the number of packed sequences; any float dtype
            (the state is kept in float32, float64 for float64 inputs; its gradient comes back in the
            dtype given). Differentiable.
        output_final_state: also return the final state ``(N, H, K, V)``.
        cu_seqlens: int32 or int64 ``(N + 1,)`` offsets of packed sequences along T (B must be 1); each sequence
            starts from its own initial state (or zeros).
        chunk_size: rows per chunk (a multiple of 16 up to 128; the CUDA kernels use at most 64).
            Results agree across chunk sizes up to rounding.

    Returns ``(o, final_state)``: o ``(B, T, H, V)`` in q's dtype; final_state None unless asked for.

    Example (RetNet)::

        >>> q = k = v = torch.randn(1, 1000, 8, 64, dtype=torch.bfloat16)
        >>> o, _ = kernkit.linear_attn(q, k, v, kernkit.retnet_decay(8))
    """
    fn = "linear_attn"
    _check_qkv(fn, q, k, v, 4)
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = _acc_dtype(q.dtype)
    scale = _scale_of(fn, scale, K)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not (16 <= chunk_size <= 128) \
            or chunk_size % 16:
        raise ValueError(f"{fn}: chunk_size must be a multiple of 16 in [16, 128], got {chunk_size!r}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"{fn}: output_final_state must be a bool")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"{fn}: with cu_seqlens the batch size must be 1 (sequences packed along T), got B={B}")
        chk.same_device(fn, "cu_seqlens", cu_seqlens, "q", q)
        cu_seqlens = chk.cu_seqlens(fn, "cu_seqlens", cu_seqlens, T)
        N = cu_seqlens.numel() - 1
    if g is not None:
        chk.tensor(fn, "g", g)
        chk.same_device(fn, "g", g, "q", q)
        shapes = {1: (H,), 3: (B, T, H), 4: (B, T, H, K)}
        if g.dim() not in shapes or tuple(g.shape) != shapes[g.dim()]:
            raise ValueError(f"{fn}: g must be (H,) = {(H,)}, (B, T, H) = {(B, T, H)} or (B, T, H, K) = "
                             f"{(B, T, H, K)}, got {tuple(g.shape)}")
        _check_gate_values(fn, g)
        g = g.to(acc).contiguous()
    if initial_state is not None:
        # any float dtype (fla accepts the input dtype): the kernels keep states in `acc`, and the
        # gradient flows back through the cast in the given dtype
        _check_state(fn, "initial_state", initial_state, (N, H, K, V), acc, q, any_float=True)
        initial_state = initial_state.to(acc).contiguous()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    o, ht = call(_fwd_op, q, k, v, g, initial_state, cu_seqlens, scale, chunk_size, output_final_state)
    return o, (ht if output_final_state else None)


_STEP_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _step_fast(q, k, v, state, g, scale, inplace):
    """The decode step's common case, checked with attribute reads only (a token costs ~10 us,
    so a dozen generic checks would double it): plain contiguous CPU tensors, no autograd, no
    torch.compile or modes. Anything else returns None and takes the fully checked path; the
    gate's sign is checked in C++ before the state is touched."""
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor \
            or type(state) is not torch.Tensor or (g is not None and type(g) is not torch.Tensor) \
            or inplace not in (True, False) or not (q.is_cpu and k.is_cpu and v.is_cpu and state.is_cpu) \
            or (g is not None and not g.is_cpu) or not _eager_plain((q, k, v, state, g)):
        return None
    dt, qs = q.dtype, q.shape
    if dt not in _STEP_FAST_DTYPES or k.dtype is not dt or v.dtype is not dt or state.dtype is not torch.float32 \
            or len(qs) not in (3, 4) or (len(qs) == 4 and qs[1] != 1) or v.dim() != len(qs):
        return None
    B, H, K, V = qs[0], qs[-2], qs[-1], v.shape[-1]
    if k.shape != qs or v.shape[:-1] != qs[:-1] or state.shape != (B, H, K, V) or not (1 <= K <= 256) \
            or not (1 <= V <= 256) or B == 0 or not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
                                                     and state.is_contiguous()):
        return None
    if scale is None:
        scale = K ** -0.5
    elif type(scale) not in (float, int) or not math.isfinite(scale):
        return None
    if g is not None:
        if g.dtype is not torch.float32 or not g.is_contiguous():
            return None
        gs = g.shape
        if gs == (B, 1, H) or gs == (B, 1, H, K):
            g = g.view(gs[:1] + gs[2:])
        elif gs not in ((H,), (B, H), (B, H, K)):
            return None
    return _step_impl(q, k, v, g, state, float(scale), new_state=state if inplace else None)


def linear_attn_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                     g: Optional[torch.Tensor] = None, *, scale: Optional[float] = None, inplace: bool = False):
    """One recurrent decode step of :func:`linear_attn` for a single new token per sequence.

    Args:
        q, k: ``(B, H, K)`` or ``(B, 1, H, K)``; v: ``(B, H, V)`` or ``(B, 1, H, V)``.
        state: ``(B, H, K, V)`` float32 (float64 for float64 inputs), e.g. linear_attn's final state.
        g: None, ``(H,)``, ``(B, H)`` (or ``(B, 1, H)``), or ``(B, H, K)`` (or ``(B, 1, H, K)``); ``<= 0``.
        scale: default ``K ** -0.5``.

        inplace: update ``state`` in place and return it as new_state (a decode cache; no new
            allocation, half the memory traffic). Needs a contiguous state and no autograd.

    Returns ``(o, new_state)``: o shaped like v, new_state like state (the input is not modified
    unless ``inplace=True``). Differentiable (through :func:`linear_attn` with T = 1 when a
    gradient is needed).
    """
    fast = _step_fast(q, k, v, state, g, scale, inplace)
    if fast is not None:
        return fast
    fn = "linear_attn_step"
    chk.tensor(fn, "q", q)
    seq_dim = q.dim() == 4
    if q.dim() not in (3, 4) or (seq_dim and q.shape[1] != 1):
        raise ValueError(f"{fn}: q must be (B, H, K) or (B, 1, H, K), got {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        chk.tensor(fn, name, t)
        if t.dim() != q.dim():
            raise ValueError(f"{fn}: {name} must have q's rank ({q.dim()}-D), got {tuple(t.shape)}")
    q4, k4, v4 = (t if seq_dim else t.unsqueeze(1) for t in (q, k, v))
    _check_qkv(fn, q4, k4, v4, 4)
    B, _, H, K = q4.shape
    V = v4.shape[-1]
    acc = _acc_dtype(q.dtype)
    scale = _scale_of(fn, scale, K)
    _check_state(fn, "state", state, (B, H, K, V), acc, q)
    if g is not None:
        chk.tensor(fn, "g", g)
        chk.same_device(fn, "g", g, "q", q)
        if g.dim() >= 2 and g.shape[1:2] == (1,) and g.dim() in (3, 4) and tuple(g.shape[2:3]) == (H,):
            g = g.squeeze(1)
        ok = {1: (H,), 2: (B, H), 3: (B, H, K)}
        if g.dim() not in ok or tuple(g.shape) != ok[g.dim()]:
            raise ValueError(f"{fn}: g must be (H,), (B, H) or (B, H, K) (optionally with a length-1 time dim), "
                             f"got {tuple(g.shape)}")
        # g <= 0 is checked by linear_attn (autograd path) or in C++ (the step kernels)
    if not isinstance(inplace, bool):
        raise TypeError(f"{fn}: inplace must be a bool")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, state, g))
    if inplace:
        if needs_grad:
            raise RuntimeError(f"{fn}: inplace=True cannot be differentiated; use inplace=False for training")
        chk.contiguous(fn, "state", state)
        q3, k3, v3 = (t.squeeze(1).contiguous() for t in (q4, k4, v4))
        g = None if g is None else g.to(acc).contiguous()
        o = call(_step_inplace_op, q3, k3, v3, g, state, scale)
        return (o.unsqueeze(1) if seq_dim else o), state
    if needs_grad:
        gs = None if g is None else (g if g.dim() == 1 else g.unsqueeze(1))
        o, new_state = linear_attn(q4, k4, v4, gs, scale=scale, initial_state=state, output_final_state=True)
        return (o if seq_dim else o.squeeze(1)), new_state
    q3, k3, v3 = (t.squeeze(1).contiguous() for t in (q4, k4, v4))
    g = None if g is None else g.to(acc).contiguous()
    o, new_state = call(_step_op, q3, k3, v3, g, state.contiguous(), scale)
    return (o.unsqueeze(1) if seq_dim else o), new_state


def retnet_decay(num_heads: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RetNet's per-head log decay ``log(1 - 2^(-5 - h))`` for h = 0..num_heads-1 (the ``g`` of
    :func:`linear_attn` for retention; Lightning attention uses such per-head constants too)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"retnet_decay: num_heads must be a positive int, got {num_heads!r}")
    return _retnet_decay(num_heads, dtype)

