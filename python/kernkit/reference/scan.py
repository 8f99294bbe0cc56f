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
                      return_final_state: bool = False):
    """Depthwise causal conv over (B, D, L) with weight (D, W): F.conv1d on [initial_state | x]."""
    D, W = weight.shape
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], D, W - 1)
    ext = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    y = F.conv1d(ext, weight.unsqueeze(1), bias, groups=D)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    if return_final_state:
        return y, ext[..., ext.shape[-1] - (W - 1):]
    return y
