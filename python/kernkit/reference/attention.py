"""Plain-PyTorch attention with an explicit mask: the semantics kernkit's
flash_attn implements (bottom-right aligned causal/window masks, sinks, softcap,
sigmoid activation, GQA). Slow and memory-hungry (materialises S x S)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch


def attention_mask(sq: int, sk: int, *, causal: bool = False, window: Sequence[int] = (-1, -1), sinks: int = 0,
                   diag_shift: int = 0, device=None) -> torch.Tensor:
    """Boolean (sq, sk) mask, True where query i may see key j:
    ``i + off - left <= j <= i + off + right`` (off = sk - sq + diag_shift; -1 = unbounded;
    causal sets right = 0), or ``j < sinks`` subject to the right bound."""
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    off = sk - sq + diag_shift
    upper = torch.ones(sq, sk, dtype=torch.bool, device=device) if right < 0 else (j <= i + off + right)
    lower = torch.ones(sq, sk, dtype=torch.bool, device=device) if left < 0 else (j >= i + off - left)
    return upper & (lower | (j < sinks))


def flash_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   window: Sequence[int] = (-1, -1), sinks: int = 0, softcap: float = 0.0,
                   scale: Optional[float] = None, activation: str = "softmax",
                   sigmoid_bias: Union[None, float, torch.Tensor] = None, num_keys: Optional[int] = None,
                   compute_dtype: Optional[torch.dtype] = None, diag_shift: int = 0):
    """q (B, Sq, Hq, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv) -> (out (B, Sq, Hq, Dv), lse (B, Hq, Sq) fp32).

    Every step runs in ``compute_dtype`` (default: q's dtype); the output is cast
    back to q's dtype. Rows with no visible key give 0 (lse -inf). For sigmoid,
    lse is None and the default bias is ``-log(num_keys)`` (default: Sk)."""
    ct = compute_dtype or q.dtype
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = D ** -0.5 if scale is None else scale
    qc = q.to(ct).transpose(1, 2)                                   # B, Hq, Sq, D
    kc = k.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)   # B, Hq, Sk, D
    vc = v.to(ct).transpose(1, 2).repeat_interleave(group, dim=1)
    s = (qc @ kc.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    mask = attention_mask(Sq, Sk, causal=causal, window=window, sinks=sinks, diag_shift=diag_shift,
                          device=q.device)
    if activation == "sigmoid":
        if sigmoid_bias is None:
            sigmoid_bias = -math.log(max(num_keys if num_keys is not None else Sk, 1))
        bias = sigmoid_bias.to(ct).view(1, Hq, 1, 1) if isinstance(sigmoid_bias, torch.Tensor) else sigmoid_bias
        p = torch.sigmoid(s + bias) * mask
        return (p @ vc).transpose(1, 2).to(q.dtype), None
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                # -inf for empty rows
    p = torch.exp(s - lse.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    p = p.masked_fill(~mask, 0.0)
    out = (p @ vc).transpose(1, 2).to(q.dtype)
    return out, lse.float()


def flash_attn_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, **kw):
    """Packed sequences (total, H, D): the reference run per sequence.
    Returns (out (total_q, Hq, Dv), lse (Hq, total_q) or None)."""
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        qs, qe = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        ks, ke = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        o, lse = flash_attn_ref(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], **kw)
        outs.append(o[0])
        lses.append(None if lse is None else lse[0])
    out = torch.cat(outs, 0) if outs else q.new_empty((0, q.shape[1], v.shape[-1]))
    lse = None if (not lses or lses[0] is None) else torch.cat(lses, -1)
    return out, lse
