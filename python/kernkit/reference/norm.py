from __future__ import annotations

from typing import Optional

import torch


def rms_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-6,
                 compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """RMSNorm in plain PyTorch. ``compute_dtype`` (default: x's dtype) is the
    precision every step runs in; the result is cast back to x's dtype."""
    ct = compute_dtype or x.dtype
    xc = x.to(ct)
    y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(ct)
    return y.to(x.dtype)
