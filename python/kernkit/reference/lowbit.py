"""Plain-PyTorch references for the low-bit matmuls (BitNet b1.58 and binary),
including the integer arithmetic the int8 kernels must reproduce exactly."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def ternary_quantize_ref(w: torch.Tensor, per_row: bool = False):
    """BitNet b1.58 absmean: scale = mean|W| (per tensor or per output row), W_q = clamp(round(W / scale), -1, 1).
    Returns (W_q int8, scale fp32). The mean is taken in fp64 and rounded once to fp32 (an fp32
    running sum over millions of weights would be off in the last bits, depending on its order)."""
    wf = w.float()
    a = wf.abs().double()
    scale = (a.mean(dim=1) if per_row else a.mean()).float().clamp(min=1e-5)
    wq = (wf / (scale[:, None] if per_row else scale)).round().clamp(-1, 1).to(torch.int8)
    return wq, scale


def act_quant_ref(x: torch.Tensor):
    """Per-token int8: s = 127 / max|x| (rows), x_q = clamp(round(x * s), -128, 127). Returns (x_q int8, s fp32)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    s = amax.new_tensor(127.0) / amax  # a true division (`127.0 / t` would be 127 * reciprocal(t))
    return (xf * s).round().clamp(-128, 127).to(torch.int8), s


def ternary_linear_ref(x: torch.Tensor, w_q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       act_bits: Optional[int] = 8) -> torch.Tensor:
    """y = (x_q @ W_q^T) / s * scale + bias, with the integer product exact (int64), then the fp32
    rescale in this order; act_bits=None: y = (x @ W_q^T) * scale in fp32."""
    sc = scale.float()
    sc = sc if sc.dim() == 0 else sc[None, :]
    if act_bits is None:
        y = (x.float() @ w_q.float().t()) * sc
    else:
        xq, s = act_quant_ref(x.reshape(-1, x.shape[-1]))
        acc = (xq.long() @ w_q.long().t()).float()
        y = (acc / s * sc).reshape(*x.shape[:-1], w_q.shape[0])
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def binary_quantize_ref(w: torch.Tensor):
    """sign(W) with sign(0) = +1, and alpha = mean|W| per output row (in fp64, rounded once to fp32).
    Returns (signs int8, alpha fp32)."""
    wf = w.float()
    return torch.where(wf >= 0, 1, -1).to(torch.int8), wf.abs().double().mean(dim=1).float()


def binary_linear_ref(x: torch.Tensor, w_sign: torch.Tensor, alpha: torch.Tensor,
                      bias: Optional[torch.Tensor] = None, binarize_input: bool = False) -> torch.Tensor:
    """binarize_input: y = beta * alpha * (sign(x) . sign(W)) with beta = mean|x| per row (the dot
    is exact: K - 2 * popcount(x xor w)); else y = alpha * (x @ sign(W)^T)."""
    xf = x.float()
    if binarize_input:
        xs = torch.where(xf >= 0, 1, -1).long()
        beta = xf.abs().mean(dim=-1, keepdim=True)
        y = (xs @ w_sign.long().t()).float() * beta * alpha.float()
    else:
        y = (xf @ w_sign.float().t()) * alpha.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def bitlinear_emulated(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The usual PyTorch BitLinear training emulation: fake-quantised activations and weights
    with straight-through estimators (detach trick), then F.linear."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    xq = x + ((x * s).round().clamp(-128, 127) / s - x).detach()
    ws = weight.abs().mean().clamp(min=1e-5)
    wq = weight + ((weight / ws).round().clamp(-1, 1) * ws - weight).detach()
    return F.linear(xq, wq, bias)
