"""Context-parallel (ring) attention over ``torch.distributed``.

Each rank holds a slice of the sequence; key/value blocks travel around the ring
of ranks with point-to-point sends (``batch_isend_irecv``, overlapped with the
attention on the block already at hand) and the partial results merge exactly:
softmax partials through their log-sum-exps, sigmoid partials by plain addition.
Every block is computed by kernkit's attention kernels with the mask placed at
the block's global position, so causal / window / sink / softcap masks give the
same result as one :func:`kernkit.flash_attn` call on the whole sequence, and
blocks the mask hides entirely are skipped.

The backward sends the blocks around the ring again; each block travels with its
fp32 dK/dV accumulators and arrives home after a full turn.

Layouts (see :func:`shard_sequence`):

* ``"contiguous"``: rank r holds the r-th slice (slices may differ in length by
  any amount, e.g. ``tensor_split``). With a causal mask the last rank does the
  most work.
* ``"zigzag"``: the sequence is cut into ``2 * world`` equal chunks and rank r
  holds chunks ``r`` and ``2 * world - 1 - r``, which balances causal work.

Works with any backend that has point-to-point ops: gloo for CPU tensors, NCCL for
CUDA tensors (each block then runs kernkit's CUDA kernels; the small argument
exchange happens on q's device).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from . import _checks as chk
from .attention import _bwd_impl, _check_qkv, _fwd_impl, _options

LAYOUTS = ("contiguous", "zigzag")

# Bytes this process sent in the last ring forward / backward (for the benchmark).
comm_stats = {"forward_bytes": 0, "backward_bytes": 0, "forward_messages": 0, "backward_messages": 0}


# --------------------------------------------------------------------------- sharding helpers

def _zigzag_chunks(length: int, world_size: int, fn: str) -> int:
    if length % (2 * world_size):
        raise ValueError(f"{fn}: layout='zigzag' needs the sequence length ({length}) to be a multiple of "
                         f"2 * world_size = {2 * world_size}; pad it or use layout='contiguous'")
    return length // (2 * world_size)


def _check_layout(fn: str, layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"{fn}: layout must be one of {LAYOUTS}, got {layout!r}")


def shard_sequence(x: torch.Tensor, rank: int, world_size: int, *, layout: str = "contiguous",
                   dim: int = 1) -> torch.Tensor:
    """This rank's part of a full sequence ``x`` (no communication).

    ``contiguous``: ``torch.tensor_split(x, world_size, dim)[rank]`` (any length);
    ``zigzag``: chunks ``rank`` and ``2*world_size-1-rank`` of ``2*world_size`` equal
    chunks, concatenated (the length must divide evenly)."""
    fn = "shard_sequence"
    _check_layout(fn, layout)
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"{fn}: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if layout == "contiguous":
        return torch.tensor_split(x, world_size, dim)[rank]
    c = _zigzag_chunks(x.shape[dim], world_size, fn)
    first, second = x.narrow(dim, rank * c, c), x.narrow(dim, (2 * world_size - 1 - rank) * c, c)
    return torch.cat([first, second], dim)


def unshard_sequence(parts: Sequence[torch.Tensor], *, layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: the full sequence from every rank's part (in rank order)."""
    fn = "unshard_sequence"
    _check_layout(fn, layout)
    if layout == "contiguous":
        return torch.cat(list(parts), dim)
    world = len(parts)
    halves = [p.chunk(2, dim) for p in parts]
    if any(p.shape[dim] % 2 for p in parts):
        raise ValueError(f"{fn}: zigzag parts must have an even length along dim {dim}")
    return torch.cat([halves[r][0] for r in range(world)] + [halves[r][1] for r in reversed(range(world))], dim)


def gather_sequence(x: torch.Tensor, *, group=None, layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """All-gathers every rank's part and returns the full sequence on every rank."""
    fn = "gather_sequence"
    _check_layout(fn, layout)
    world = dist.get_world_size(group)
    lengths = [torch.zeros((), dtype=torch.int64, device=x.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor(x.shape[dim], dtype=torch.int64, device=x.device), group=group)
    lengths = [int(n) for n in lengths]
    longest = max(lengths)
    pad = list(x.shape)
    pad[dim] = longest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim).contiguous()
    bufs = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(bufs, padded, group=group)
    return unshard_sequence([b.narrow(dim, 0, n) for b, n in zip(bufs, lengths)], layout=layout, dim=dim)


# --------------------------------------------------------------------------- the ring plan

@dataclass(frozen=True)
class _Segment:
    local: int    # first row in the rank's tensor
    start: int    # first position in the full sequence
    length: int


def _segments(layout: str, rank: int, lengths: List[int]) -> List[_Segment]:
    if layout == "contiguous":
        return [_Segment(0, sum(lengths[:rank]), lengths[rank])]
    world, c = len(lengths), lengths[rank] // 2
    return [_Segment(0, rank * c, c), _Segment(c, (2 * world - 1 - rank) * c, c)]


@dataclass
class _Plan:
    group: object
    rank: int
    world: int
    segments: List[List[_Segment]]   # per rank
    kv_numel: List[Tuple[int, int]]  # per rank: (k numel, v numel)
    opts: list                       # scale, softcap, left, right, sinks, act, bias, bias_value, bias_default
    timeout: Optional[datetime.timedelta]

    def peer(self, r: int) -> int:
        r %= self.world
        if self.group is None or self.group is dist.group.WORLD:
            return r
        return dist.get_global_rank(self.group, r)


def _pair_shift(qs: _Segment, ks: _Segment) -> int:
    """diag_shift placing key block ks at its global position relative to query block qs
    (in the full sequence Sq == Sk, so the global diagonal offset is 0)."""
    return (qs.start - ks.start) - (ks.length - qs.length)


def _pair_sinks(opts, ks: _Segment) -> int:
    return max(0, min(opts[4] - ks.start, ks.length))


def _pair_status(opts, qs: _Segment, ks: _Segment) -> str:
    """'hidden' (the mask hides every key from every query), 'full' (it hides none) or 'partial'."""
    if qs.length == 0 or ks.length == 0:
        return "hidden"
    left, right = opts[2], opts[3]
    off = qs.start - ks.start   # local key j is compared with i + off
    lo = -math.inf if left < 0 else off - left                   # lowest key some row sees
    hi = math.inf if right < 0 else qs.length - 1 + off + right  # highest key some row sees
    sink = _pair_sinks(opts, ks) > 0 and (right < 0 or qs.length - 1 + off + right >= 0)
    if not (max(lo, 0) <= min(hi, ks.length - 1) or sink):
        return "hidden"
    upper_ok = right < 0 or ks.length - 1 <= off + right          # row 0 sees the last key
    lower_ok = left < 0 or qs.length - 1 + off - left <= 0         # the last row sees key 0
    return "full" if upper_ok and lower_ok else "partial"


@dataclass(frozen=True)
class _Call:
    q0: int        # local query rows [q0, q0 + nq)
    nq: int
    k0: int        # rows [k0, k0 + nk) of the block at hand
    nk: int
    opts: tuple
    shift: int


def _step_calls(plan: _Plan, src: int, opts) -> List[_Call]:
    """Attention calls for this rank's queries against the k/v block of rank `src`: one per
    (query segment, key segment) pair the mask does not hide, or a single unmasked call when
    every pair is either hidden or fully visible and the visible ones form one rectangle (the
    common case for zigzag causal blocks)."""
    qsegs, ksegs = plan.segments[plan.rank], plan.segments[src]
    status = {(a, b): _pair_status(opts, qs, ks) for a, qs in enumerate(qsegs) for b, ks in enumerate(ksegs)}
    visible = [p for p, st in status.items() if st != "hidden"]
    if not visible:
        return []
    rows = sorted({a for a, _ in visible})
    cols = sorted({b for _, b in visible})
    rectangle = (all(status[(a, b)] == "full" for a in rows for b in cols)
                 and rows == list(range(rows[0], rows[-1] + 1)) and cols == list(range(cols[0], cols[-1] + 1)))
    if rectangle and len(visible) > 1:
        q0, k0 = qsegs[rows[0]].local, ksegs[cols[0]].local
        nq = sum(qsegs[a].length for a in rows)
        nk = sum(ksegs[b].length for b in cols)
        unmasked = list(opts)
        unmasked[2:5] = [-1, -1, 0]
        return [_Call(q0, nq, k0, nk, tuple(unmasked), 0)]
    calls = []
    for a, b in visible:
        qs, ks = qsegs[a], ksegs[b]
        o = list(opts)
        o[4] = _pair_sinks(opts, ks)
        calls.append(_Call(qs.local, qs.length, ks.local, ks.length, tuple(o), _pair_shift(qs, ks)))
    return calls


def _wait(plan: _Plan, works, step: int, what: str) -> None:
    try:
        for w in works:
            if plan.timeout is None:
                w.wait()
            else:
                w.wait(plan.timeout)
    except Exception as e:  # gloo raises RuntimeError subclasses; name the step and the peers
        raise RuntimeError(f"ring_flash_attn: {what} at ring step {step} on rank {plan.rank} failed (a peer rank "
                           f"may have failed or timed out): {e}") from e


_TAG_KV, _TAG_DKV = 0, 1


def _exchange(plan: _Plan, send: torch.Tensor, recv: torch.Tensor, stats_key: str, tag: int = _TAG_KV):
    """Starts sending `send` to the next rank and receiving `recv` from the previous one."""
    ops = [dist.P2POp(dist.isend, send, plan.peer(plan.rank + 1), plan.group, tag),
           dist.P2POp(dist.irecv, recv, plan.peer(plan.rank - 1), plan.group, tag)]
    comm_stats[f"{stats_key}_bytes"] += send.numel() * send.element_size()
    comm_stats[f"{stats_key}_messages"] += 1
    return dist.batch_isend_irecv(ops)


def _split_kv(kv: torch.Tensor, like_k: torch.Tensor, like_v: torch.Tensor, length: int):
    """Views k (B, length, Hkv, D) and v (B, length, Hkv, Dv) of a flat ring buffer."""
    B, _, H, D = like_k.shape
    Dv = like_v.shape[-1]
    nk = B * length * H * D
    return kv[:nk].view(B, length, H, D), kv[nk:nk + B * length * H * Dv].view(B, length, H, Dv)


# --------------------------------------------------------------------------- forward and backward

def _ring_forward(plan: _Plan, q, k, v, bias):
    softmax = plan.opts[5] == 0
    B, S, Hq, _ = q.shape
    Dv = v.shape[-1]
    out = torch.zeros(B, S, Hq, Dv, dtype=torch.float32, device=q.device)
    lse = torch.full((B, Hq, S), -math.inf, dtype=torch.float32, device=q.device) if softmax else None
    opts = list(plan.opts)
    opts[6] = bias
    kv = torch.cat([k.reshape(-1), v.reshape(-1)])
    seen = [False] * S   # rows that already hold a partial result (host-side: no device sync)
    comm_stats["forward_bytes"] = comm_stats["forward_messages"] = 0
    for step in range(plan.world):
        src = (plan.rank - step) % plan.world
        works, nxt = [], None
        if step + 1 < plan.world:
            nk, nv = plan.kv_numel[(src - 1) % plan.world]
            nxt = kv.new_empty(nk + nv)
            works = _exchange(plan, kv, nxt, "forward")
        kb, vb = _split_kv(kv, k, v, sum(s.length for s in plan.segments[src]))
        for c in _step_calls(plan, src, opts):
            o, l = _fwd_impl(q.narrow(1, c.q0, c.nq), kb.narrow(1, c.k0, c.nk), vb.narrow(1, c.k0, c.nk), None,
                             None, None, c.nq, c.nk, *c.opts, c.shift)
            rows = slice(c.q0, c.q0 + c.nq)
            if not softmax:
                out[:, rows] += o.float()
            elif any(seen[c.q0:c.q0 + c.nq]):
                _merge(out[:, rows], lse[:, :, rows], o, l)
            else:   # first partial of these rows: nothing to merge with
                out[:, rows] = o.float()
                lse[:, :, rows] = l
            seen[c.q0:c.q0 + c.nq] = [True] * c.nq
        _wait(plan, works, step, "receiving k/v")
        if nxt is not None:
            kv = nxt
    return out.to(q.dtype), lse


def _merge(acc_out, acc_lse, o, l):
    """acc <- softmax-weighted combination of acc and a block result (in place on views)."""
    new = torch.logaddexp(acc_lse, l)
    ref = torch.where(torch.isinf(new), torch.zeros_like(new), new)   # rows that see no key yet stay 0
    w_acc = torch.exp(acc_lse - ref).transpose(1, 2).unsqueeze(-1)
    w_blk = torch.exp(l - ref).transpose(1, 2).unsqueeze(-1)
    acc_out.mul_(w_acc).add_(o.float() * w_blk)
    acc_lse.copy_(new)


def _ring_backward(plan: _Plan, dout, q, k, v, out, lse, bias, need_dbias):
    opts = list(plan.opts)
    opts[6] = bias
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dbias = torch.zeros(q.shape[2], dtype=torch.float32, device=q.device) if need_dbias else None
    kv = torch.cat([k.reshape(-1), v.reshape(-1)])
    comm_stats["backward_bytes"] = comm_stats["backward_messages"] = 0
    lse_rows = {}
    incoming, dkv_works = None, []
    for step in range(plan.world):
        src = (plan.rank - step) % plan.world
        n_src = sum(s.length for s in plan.segments[src])
        kb, vb = _split_kv(kv, k, v, n_src)
        kv_works, kv_next = [], None
        if step + 1 < plan.world:   # the next block's k/v move while this one computes
            kv_next = kv.new_empty(sum(plan.kv_numel[(src - 1) % plan.world]))
            kv_works = _exchange(plan, kv, kv_next, "backward")
        # This block's dK/dV, fp32: this rank's part first, then (below) the sum the previous
        # ranks have built up, which arrived while this part was computed.
        acc = torch.zeros(sum(plan.kv_numel[src]), dtype=torch.float32, device=q.device)
        dkb, dvb = _split_kv(acc, k, v, n_src)
        for c in _step_calls(plan, src, opts):
            rows = slice(c.q0, c.q0 + c.nq)
            l_rows = None
            if lse is not None:
                if (c.q0, c.nq) not in lse_rows:
                    lse_rows[(c.q0, c.nq)] = lse[:, :, rows].contiguous()
                l_rows = lse_rows[(c.q0, c.nq)]
            g = _bwd_impl(dout[:, rows], q[:, rows], kb.narrow(1, c.k0, c.nk), vb.narrow(1, c.k0, c.nk),
                          out[:, rows], l_rows, None, None, None, c.nq, c.nk, *c.opts, c.shift, need_dbias)
            dq[:, rows] += g[0].float()
            dkb.narrow(1, c.k0, c.nk).add_(g[1].float())
            dvb.narrow(1, c.k0, c.nk).add_(g[2].float())
            if need_dbias:
                dbias += g[3]
        _wait(plan, dkv_works, step, "exchanging dK/dV")   # (NCCL may coalesce send and receive)
        if incoming is not None:
            acc += incoming
        # pass the block's gradients on; after the last step each accumulator is home
        if plan.world == 1:   # already home (a group of one has no peer to send to)
            incoming = acc
        else:
            incoming = acc.new_empty(sum(plan.kv_numel[(src - 1) % plan.world]))
            dkv_works = _exchange(plan, acc, incoming, "backward", _TAG_DKV)
        _wait(plan, kv_works, step, "receiving k/v")
        if kv_next is not None:
            kv = kv_next
    _wait(plan, dkv_works, plan.world, "exchanging dK/dV")
    dk, dv = _split_kv(incoming, k, v, k.shape[1])
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


class _RingAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, plan):
        out, lse = _ring_forward(plan, q, k, v, bias)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, out, lse, bias)
        ctx.mark_non_differentiable(*([lse] if lse is not None else []))
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, bias = ctx.saved_tensors
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _ring_backward(ctx.plan, dout.contiguous(), q, k, v, out, lse, bias, need_dbias)
        return dq, dk, dv, dbias, None


# --------------------------------------------------------------------------- public API

def _comm_device(q):
    """Where the argument exchange's tensor lives: q's GPU for CUDA tensors (NCCL), else the CPU."""
    return q.device if isinstance(q, torch.Tensor) and q.is_cuda else torch.device("cpu")


def _local_meta(fn, q, k, v, layout, causal, window, sinks, softcap, scale, activation, sigmoid_bias,
                return_lse):
    """Validates this rank's arguments; returns (options, integers every rank must agree on)."""
    _check_qkv(fn, q, k, v, 4)
    _check_layout(fn, layout)
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"{fn}: each rank must hold the same positions of q and k/v (self-attention); got "
                         f"{q.shape[1]} query rows and {k.shape[1]} key rows")
    if layout == "zigzag" and q.shape[1] % 2:
        raise ValueError(f"{fn}: layout='zigzag' needs an even local length (two equal chunks), got {q.shape[1]}")
    opts = _options(fn, q, causal, window, sinks, softcap, scale, activation, sigmoid_bias, return_lse, False)
    B, S, Hq, D = q.shape
    agree = [B, Hq, k.shape[2], D, v.shape[-1], LAYOUTS.index(layout), _DTYPES.index(q.dtype), opts[0], opts[1],
             opts[2], opts[3], opts[4], opts[5], opts[6] is not None, opts[7], opts[8]]
    return opts, agree


_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_N_AGREE = 16


def ring_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                    window: Sequence[int] = (-1, -1), sinks: int = 0, softcap: float = 0.0,
                    scale: Optional[float] = None, activation: str = "softmax",
                    sigmoid_bias: Union[None, float, torch.Tensor] = None, layout: str = "contiguous",
                    return_lse: bool = False, timeout: Optional[float] = None):
    """Attention over a sequence sharded across the ranks of ``group`` (Ring Attention).

    Args:
        q, k, v: this rank's slice ``(B, S_local, H, D)`` of the full sequence (same rows of q and
            k/v; GQA/MQA heads as in :func:`kernkit.flash_attn`), laid out as ``layout`` says
            (make them with :func:`shard_sequence`).
        group: the process group (default: the world). Every rank of it must call this with the
            same options; shapes may differ only in ``S_local`` (contiguous layout).
        causal, window, sinks, softcap, scale, activation, sigmoid_bias: as :func:`kernkit.flash_attn`,
            applied to global positions; the sigmoid default bias is ``-log(full length)``.
        layout: ``"contiguous"`` or ``"zigzag"`` (balanced causal work).
        return_lse: also return this rank's log-sum-exp rows ``(B, H, S_local)`` (softmax).
        timeout: seconds to wait for a peer before raising (default: the group's timeout).

    Returns this rank's ``out (B, S_local, H, Dv)`` (and lse). Gradients flow to q, k, v (each
    rank gets the gradients of its own slice) and to a per-head sigmoid bias tensor (this rank's
    contribution: all-reduce it like any replicated parameter).

    Errors: a rank whose arguments are invalid raises its own error and every other rank raises a
    RuntimeError naming it; a rank that dies mid-ring makes its peers raise instead of hanging.
    """
    fn = "ring_flash_attn"
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}: torch.distributed is not initialised (call init_process_group first)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    error, opts, agree = None, None, [0] * _N_AGREE
    try:
        opts, agree = _local_meta(fn, q, k, v, layout, causal, window, sinks, softcap, scale, activation,
                                  sigmoid_bias, return_lse)
        if timeout is not None:
            chk.finite_float(fn, "timeout", timeout, min_value=0.0)
    except (TypeError, ValueError, RuntimeError) as e:
        error = e
    # One small all-gather: error flags, local lengths and everything the ranks must agree on
    # (float64 holds every int and option exactly).
    meta = torch.tensor([0 if error is None else 1, q.shape[1] if error is None else 0] + agree,
                        dtype=torch.float64, device=_comm_device(q))
    metas = [torch.empty_like(meta) for _ in range(world)]
    wait_for = None if timeout is None or error is not None else datetime.timedelta(seconds=float(timeout))
    work = dist.all_gather(metas, meta, group=group, async_op=True)
    try:
        work.wait() if wait_for is None else work.wait(wait_for)
    except Exception as e:
        raise RuntimeError(f"{fn}: rank {rank} could not exchange arguments with its peers (a peer rank may "
                           f"have failed or timed out): {e}") from e
    if error is not None:
        raise error
    bad = [r for r, m in enumerate(metas) if int(m[0])]
    if bad:
        raise RuntimeError(f"{fn}: rank(s) {bad} rejected their arguments; see the error on those ranks")
    differ = [r for r, m in enumerate(metas) if not torch.equal(m[2:], meta[2:])]
    if differ:
        raise ValueError(f"{fn}: ranks {differ} disagree with rank {rank} on batch, heads, head dims, dtype, layout "
                         "or mask options; every rank must pass the same")
    lengths = [int(m[1]) for m in metas]
    if layout == "zigzag" and len(set(lengths)) > 1:
        raise ValueError(f"{fn}: layout='zigzag' needs equal local lengths on all ranks, got {lengths}")
    if opts[5] == 1 and opts[8]:   # sigmoid default bias: -log(number of keys of the whole sequence)
        opts[7], opts[8] = -math.log(max(sum(lengths), 1)), False
    B, Hkv, D, Dv = q.shape[0], k.shape[2], k.shape[3], v.shape[3]
    plan = _Plan(group, rank, world, [_segments(layout, r, lengths) for r in range(world)],
                 [(B * n * Hkv * D, B * n * Hkv * Dv) for n in lengths], opts,
                 None if timeout is None else datetime.timedelta(seconds=float(timeout)))
    # opts[6] is the per-head bias as fp32 (made from the user's tensor, so autograd reaches it)
    out, lse = _RingAttn.apply(q.contiguous(), k.contiguous(), v.contiguous(), opts[6], plan)
    return (out, lse) if return_lse else out


__all__ = ["ring_flash_attn", "shard_sequence", "unshard_sequence", "gather_sequence", "comm_stats", "LAYOUTS"]
