"""Plain-PyTorch references for the scan family: sequential loops, obviously
correct, slow (and the baselines the benchmarks beat)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor, initial_state: Optional[torch.Tensor] = None, *,
                    reverse: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1 (a, b broadcast), h_{-1} = initial_state (or 0)."""
    a, b = torch.broadcast_tensors(a, b)
    h = torch.zeros_like(b[:, 0]) if initial_state is None else initial_state.to(b.dtype).expand_as(b[:, 0])
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    out = [None] * b.shape[1]
    a_t, b_t = a.unbind(1), b.unbind(1)
    for t in steps:
        h = a_t[t] * h + b_t[t]
        out[t] = h
    return torch.stack(out, 1) if out else b.clone()


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                      activation: Optional[str] = None, initial_state: Optional[torch.Tensor] = None,
                      return_final_state: bool = False, seq_idx: Optional[torch.Tensor] = None):
    """Depthwise causal conv over (B, D, L) with weight (D, W): F.conv1d on [initial_state | x],
    computed in the weight's dtype when it is wider (causal-conv1d's fp32 weights with 16-bit x) and
    returned in x's dtype. seq_idx (B, L): an input position counts for output t only if it has
    output t's sequence index (packed sequences)."""
    D, W = weight.shape
    dtype = torch.promote_types(x.dtype, weight.dtype)
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], D, W - 1)
    ext = torch.cat([initial_state.to(dtype), x.to(dtype)], dim=-1)
    w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
    if seq_idx is None:
        y = F.conv1d(ext, w.unsqueeze(1), b, groups=D)
    else:
        L = x.shape[-1]
        y = torch.zeros_like(x, dtype=dtype) if b is None else b[:, None].expand(x.shape).to(dtype).clone()
        t = torch.arange(L, device=x.device)
        for k in range(W):
            src = t + k - (W - 1)
            same = (src >= 0) & (seq_idx.gather(1, src.clamp(min=0).expand_as(seq_idx)) == seq_idx)
            y = y + w[None, :, k, None] * ext[..., k:k + L] * same[:, None, :].to(dtype)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    y = y.to(x.dtype)
    if return_final_state:
        return y, ext[..., ext.shape[-1] - (W - 1):].to(x.dtype)
    return y


def causal_conv1d_update_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor] = None, activation: Optional[str] = None):
    """causal-conv1d's update: x (B, D) or (B, D, L), conv_state (B, D, S >= W-1) is replaced in place by
    the last S entries of [conv_state | x]; y is the conv over [conv_state | x]'s last W-1+L entries."""
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    W, S = weight.shape[1], conv_state.shape[-1]
    ext = torch.cat([conv_state, x3], dim=-1)
    y = causal_conv1d_ref(x3, weight, bias, activation=activation,
                          initial_state=conv_state[..., S - (W - 1):] if W > 1 else None)
    conv_state.copy_(ext[..., ext.shape[-1] - S:])
    return y.squeeze(-1) if x.dim() == 2 else y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_last_state=False):
    """mamba-ssm's ``selective_scan_ref`` semantics (plus an initial state), as a sequential loop
    over time with ``unbind`` slices. u, delta (B, D, L); A (D, N); B, C (D, N), (B, N, L) or
    (B, G, N, L); D (D,); z (B, D, L); delta_bias (D,); initial_state (B, D, N)."""
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta = u.to(ct), delta.to(ct)
    A = A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    N = A.shape[1]

    def expand(m):  # -> (batch, dim, N, L) or (dim, N)
        m = m.to(ct)
        if m.dim() == 2:
            return m
        if m.dim() == 3:
            m = m.unsqueeze(1)
        return m.repeat_interleave(dim // m.shape[1], dim=1)

    Bx, Cx = expand(B), expand(C)
    x = u.new_zeros(batch, dim, N) if initial_state is None else initial_state.to(ct)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if Bx.dim() == 2:
        dBu = torch.einsum("bdl,dn,bdl->bdln", delta, Bx, u)
    else:
        dBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bx, u)
    ys = []
    Ct = Cx.unbind(-1) if Cx.dim() == 4 else None
    for t, (dA_t, dBu_t) in enumerate(zip(dA.unbind(2), dBu.unbind(2))):
        x = dA_t * x + dBu_t
        c = Ct[t] if Ct is not None else Cx
        ys.append((x * c).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)
    out = y if D is None else y + u * D.to(ct)[..., None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out
