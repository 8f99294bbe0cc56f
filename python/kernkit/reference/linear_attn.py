"""Plain-PyTorch references for chunked linear attention (linear attention, RetNet,
Lightning attention, simple GLA, GLA):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale * q_t S_t

with q, k ``(B, T, H, K)``, v ``(B, T, H, V)``, state ``(B, H, K, V)`` and a log-space gate g that is
None, ``(H,)``, ``(B, T, H)`` or ``(B, T, H, K)``. ``linear_attn_recurrent_ref`` is the token loop
(obviously correct, slow); ``linear_attn_chunk_ref`` is the chunked form written with batched
PyTorch matmuls, as flash-linear-attention's ``naive`` chunk versions are: the baseline the kernels
must beat."""

from __future__ import annotations

from typing import Optional

import torch


def gate_per_key(g: Optional[torch.Tensor], B: int, T: int, H: int, K: int, dtype, device) -> torch.Tensor:
    """Any accepted gate form as a full ``(B, T, H, K)`` log-decay tensor."""
    if g is None:
        return torch.zeros(B, T, H, K, dtype=dtype, device=device)
    g = g.to(dtype)
    if g.dim() == 1:
        return g.view(1, 1, H, 1).expand(B, T, H, K)
    if g.dim() == 3:
        return g.unsqueeze(-1).expand(B, T, H, K)
    return g


def linear_attn_recurrent_ref(q, k, v, g=None, *, scale=None, initial_state=None, output_final_state=False,
                              cu_seqlens=None):
    """Token-by-token recurrence in the precision of the inputs' float type (use fp64 inputs for a
    ground truth). Returns ``(o, final_state)``; final_state is None unless asked for."""
    if cu_seqlens is not None:
        return _varlen(linear_attn_recurrent_ref, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    gk = gate_per_key(g, B, T, H, K, acc, q.device)
    S = torch.zeros(B, H, K, V, dtype=acc, device=q.device) if initial_state is None else initial_state.to(acc)
    out = []
    for t in range(T):
        S = gk[:, t].exp().unsqueeze(-1) * S + kf[:, t].unsqueeze(-1) * vf[:, t].unsqueeze(-2)
        out.append(scale * torch.einsum("bhk,bhkv->bhv", qf[:, t], S))
    o = torch.stack(out, 1) if out else vf.new_zeros(B, 0, H, V)
    return o.to(q.dtype), (S if output_final_state else None)


def linear_attn_chunk_ref(q, k, v, g=None, *, scale=None, initial_state=None, output_final_state=False,
                          chunk_size=64, cu_seqlens=None):
    """Chunked form with batched matmuls in the inputs' dtype (bf16 stays bf16, as in fla's naive chunk
    versions): intra-chunk ``(Q K^T * decay) V`` plus inter-chunk ``(Q * exp(G)) S``; the state is fp32.
    All exponents are of non-positive numbers (cumulative gates within a chunk, relative to a query or
    the chunk end)."""
    if cu_seqlens is not None:
        return _varlen(linear_attn_chunk_ref, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens,
                       chunk_size=chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    if T == 0:
        S = initial_state if initial_state is not None else q.new_zeros(B, H, K, V, dtype=torch.float32)
        return v.new_zeros(B, 0, H, V), (S.float() if output_final_state else None)
    scale = K ** -0.5 if scale is None else scale
    dt = q.dtype
    n = (T + C - 1) // C
    pad = n * C - T
    gk = gate_per_key(g, B, T, H, K, torch.float32 if dt != torch.float64 else dt, q.device)

    def chunks(x):  # (B, T, H, X) -> (B, H, n, C, X), zero padded
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, n, C, H, -1).permute(0, 3, 1, 2, 4)

    qc, kc, vc, G = chunks(q), chunks(k), chunks(v), chunks(gk).cumsum(3)  # G: cumulative log decay in a chunk
    sdt = torch.float64 if dt == torch.float64 else torch.float32
    S = torch.zeros(B, H, K, V, dtype=sdt, device=q.device) if initial_state is None else initial_state.to(sdt)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    outs = []
    for c in range(n):
        Gc = G[:, :, c]                                        # (B, H, C, K)
        Gl = Gc[:, :, -1:]                                     # chunk end
        q_in = (qc[:, :, c] * Gc.exp()).to(dt)                 # q_i * exp(G_i)
        k_end = (kc[:, :, c] * (Gl - Gc).exp()).to(dt)         # k_j * exp(G_end - G_j)
        if g is None or g.dim() < 4:                           # scalar decay: one C x C mask
            d = (Gc[..., :1] - Gc[..., :1].transpose(-1, -2)).masked_fill(~causal, float("-inf")).exp()
            A = (qc[:, :, c] @ kc[:, :, c].transpose(-1, -2)).to(sdt) * d
        else:                                                   # per-key decay: sum over k of exp(G_ik - G_jk)
            diff = (Gc.unsqueeze(-2) - Gc.unsqueeze(-3)).masked_fill(~causal[..., None], float("-inf")).exp()
            A = torch.einsum("bhik,bhjk,bhijk->bhij", qc[:, :, c].to(sdt), kc[:, :, c].to(sdt), diff)
        o = A.to(dt) @ vc[:, :, c] + (q_in @ S.to(dt))
        outs.append(scale * o.to(sdt))
        S = Gl.transpose(-1, -2).exp() * S + (k_end.transpose(-1, -2) @ vc[:, :, c]).to(sdt)
    o = torch.stack(outs, 2).reshape(B, H, n * C, V)[:, :, :T].transpose(1, 2) if n else v.new_zeros(B, 0, H, V)
    return o.to(dt), (S if output_final_state else None)


def _varlen(fn, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, **kw):
    bounds = cu_seqlens.tolist()
    outs, finals = [], []
    for i in range(len(bounds) - 1):
        s, e = bounds[i], bounds[i + 1]
        gi = g if g is None or g.dim() == 1 else g[:, s:e]
        h0 = None if initial_state is None else initial_state[i:i + 1]
        o, ht = fn(q[:, s:e], k[:, s:e], v[:, s:e], gi, scale=scale, initial_state=h0, output_final_state=True, **kw)
        outs.append(o)
        finals.append(ht)
    o = torch.cat(outs, 1)
    return o, (torch.cat(finals, 0) if output_final_state else None)


def linear_attn_step_ref(q, k, v, state, g=None, *, scale=None):
    """One decode step: ``q, k`` ``(B, H, K)``, ``v`` ``(B, H, V)``, ``state`` ``(B, H, K, V)``;
    g None, ``(H,)``, ``(B, H)`` or ``(B, H, K)``. Returns ``(o, new_state)``."""
    B, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    acc = state.dtype
    if g is None:
        decay = None
    elif g.dim() == 1:
        decay = g.to(acc).exp().view(1, H, 1, 1)
    elif g.dim() == 2:
        decay = g.to(acc).exp().view(B, H, 1, 1)
    else:
        decay = g.to(acc).exp().unsqueeze(-1)
    S = state if decay is None else decay * state
    S = S + k.to(acc).unsqueeze(-1) * v.to(acc).unsqueeze(-2)
    o = scale * torch.einsum("bhk,bhkv->bhv", q.to(acc), S)
    return o.to(q.dtype), S


def retnet_decay(num_heads: int, dtype=torch.float32) -> torch.Tensor:
    """RetNet's per-head log decay ``log(1 - 2^(-5 - h))``, h = 0..H-1."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype)
