"""Modules built on kernkit's ops."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .lowbit import _BitLinearFn, binary_linear, binary_quantize, ternary_linear, ternary_quantize


class BitLinear(nn.Module):
    """BitNet-style linear layer with 1.58-bit (ternary) or 1-bit (binary) weights.

    Training: the layer keeps full-precision shadow weights; the forward quantises them
    (absmean ternary) and runs the int8 kernel (``act_bits=8``, BitNet b1.58) or the float-
    activation kernel (``act_bits=None``); the backward is the straight-through estimator
    (``dX`` through the ternary weights, ``dW`` dense). ``to_inference()`` replaces the shadow
    weights by the packed ones (a ``packed`` uint8 buffer and a ``scale``), which is what
    ``state_dict`` then holds.

    ``weight_bits=1`` selects binary weights (``binary_linear``; with ``act_bits=1`` the
    activations are binarised too, XNOR/popcount); binary layers are inference-only here:
    build them with :meth:`from_linear` and call :meth:`to_inference`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: float = 1.58,
                 act_bits: Optional[int] = 8, device=None, dtype=None):
        super().__init__()
        if weight_bits not in (1.58, 1):
            raise ValueError(f"BitLinear: weight_bits must be 1.58 or 1, got {weight_bits!r}")
        if weight_bits == 1.58 and act_bits not in (8, None):
            raise ValueError(f"BitLinear: act_bits must be 8 or None for ternary weights, got {act_bits!r}")
        if weight_bits == 1 and act_bits not in (1, None):
            raise ValueError(f"BitLinear: act_bits must be 1 or None for binary weights, got {act_bits!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("packed", None)
        self.register_buffer("scale", None)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, weight_bits: float = 1.58, act_bits: Optional[int] = 8) -> "BitLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_bits=weight_bits,
                    act_bits=act_bits, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @property
    def inference(self) -> bool:
        return self.packed is not None

    @torch.no_grad()
    def to_inference(self) -> "BitLinear":
        """Pack the weights and drop the full-precision shadow copy."""
        if self.weight is not None:
            if self.weight_bits == 1:
                self.packed, self.scale = binary_quantize(self.weight)
            else:
                self.packed, self.scale = ternary_quantize(self.weight)
            self.weight = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference:
            if self.weight_bits == 1:
                return binary_linear(x, self.packed, self.scale, self.bias, binarize_input=self.act_bits == 1)
            return ternary_linear(x, self.packed, self.scale, self.bias, act_bits=self.act_bits)
        if self.weight_bits == 1:
            raise RuntimeError("BitLinear: binary layers run packed; call to_inference() first")
        return _BitLinearFn.apply(x, self.weight, self.bias, self.act_bits)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, packed={self.inference}")
