"""Modules built on kernkit's ops: RMSNorm, multi-head flash attention with
GQA / RoPE / KV cache, a Mamba mixer, minGRU, and BitLinear. Ordinary
``nn.Module``s: ``state_dict``, ``to(device)`` and ``torch.compile`` work."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import flash_attn, flash_attn_with_kvcache
from .linear_attn import linear_attn, retnet_decay
from .lowbit import _BitLinearFn, binary_linear, binary_quantize, ternary_linear, ternary_quantize
from .norm import rms_norm
from .scan import causal_conv1d, linear_scan, selective_scan


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, on :func:`kernkit.rms_norm`."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x.contiguous(), self.weight.to(x.dtype), self.eps)


def _inverse_frequencies(dim: int, base: float, device) -> torch.Tensor:
    """base ** (-2i / dim) for i < dim // 2, fp32: the one definition of the rotary angles' rates."""
    return 1.0 / (base ** (torch.arange(0, dim - dim % 2, 2, device=device, dtype=torch.float32) / dim))


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) for x ``(B, S, H, D)`` at ``positions`` ``(S,)`` or ``(B, S)``."""
    D = x.shape[-1]
    ang = positions.to(torch.float32)[..., None] * _inverse_frequencies(D, base, x.device)   # (..., S, D/2)
    if ang.dim() == 2:
        ang = ang[None]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]      # (B, S, 1, D/2)
    x1, x2 = x[..., : D // 2].float(), x[..., D // 2: 2 * (D // 2)].float()
    rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    if D % 2:
        rot = torch.cat([rot, x[..., -1:].float()], -1)
    return rot.to(x.dtype)


def rotary_tables(positions: int, dim: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(positions, dim // 2)`` fp32, for ``flash_attn_with_kvcache``'s
    ``rotary_cos`` / ``rotary_sin`` (with ``rotary_interleaved=False`` it rotates exactly as
    :func:`apply_rotary` does: the same angles, products and rounding)."""
    ang = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * _inverse_frequencies(dim, base, device)
    return ang.cos(), ang.sin()


@dataclass
class KVCache:
    """Preallocated key/value cache for :class:`MultiheadFlashAttention` decoding."""

    k: torch.Tensor        # (B, capacity, Hkv, D)
    v: torch.Tensor
    lengths: torch.Tensor  # (B,) int32: tokens already stored

    @classmethod
    def empty(cls, batch: int, capacity: int, kv_heads: int, head_dim: int, device=None, dtype=torch.float32):
        shape = (batch, capacity, kv_heads, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   torch.zeros(batch, dtype=torch.int32, device=device))


class MultiheadFlashAttention(nn.Module):
    """Self-attention with GQA/MQA, optional RoPE, causal / window / sink masks, softmax or sigmoid,
    on :func:`kernkit.flash_attn`; with a :class:`KVCache` it appends the new tokens and attends over
    the cache (:func:`kernkit.flash_attn_with_kvcache`), the decode path of generation."""

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None, *, rope: bool = True,
                 causal: bool = True, window: Sequence[int] = (-1, -1), sinks: int = 0,
                 activation: str = "softmax", bias: bool = False, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if embed_dim % num_heads or num_heads % num_kv_heads:
            raise ValueError("MultiheadFlashAttention: embed_dim % num_heads and num_heads % num_kv_heads must be 0")
        self.h, self.hkv, self.d = num_heads, num_kv_heads, embed_dim // num_heads
        self.rope, self.opts = rope, dict(causal=causal, window=tuple(window), sinks=sinks, activation=activation)
        kw = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.d, bias=bias, **kw)
        self.out = nn.Linear(num_heads * self.d, embed_dim, bias=bias, **kw)

    def new_cache(self, batch: int, capacity: int, device=None, dtype=None) -> KVCache:
        w = self.qkv.weight
        return KVCache.empty(batch, capacity, self.hkv, self.d, device or w.device, dtype or w.dtype)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, S, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.hkv * self.d, self.hkv * self.d], -1)
        q, k, v = q.view(B, S, self.h, self.d), k.view(B, S, self.hkv, self.d), v.view(B, S, self.hkv, self.d)
        start = cache.lengths.long() if cache is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        if self.rope:
            pos = start[:, None] + torch.arange(S, device=x.device)
            q, k = apply_rotary(q, pos), apply_rotary(k, pos)
        if cache is None:
            o = flash_attn(q, k, v, **self.opts)
        else:
            o = flash_attn_with_kvcache(q, cache.k, cache.v, cache.lengths, k=k, v=v, **self.opts)
            cache.lengths += S
        return self.out(o.reshape(B, S, self.h * self.d))


class LinearAttention(nn.Module):
    """Multi-head linear attention layer on :func:`kernkit.linear_attn` (GLA-style block:
    projections, a decay gate, per-head RMSNorm of the output, output projection).

    gate: ``"gla"`` (per-key gate from a low-rank projection, ``logsigmoid(.) / 16`` as in GLA),
    ``"scalar"`` (one gate per head and step), ``"retnet"`` (fixed per-head decay) or ``"none"``.
    ``forward(x, state=None)`` returns ``(y, final_state)``; pass the state back to continue a
    sequence (generation), which gives the same result as one longer call.
    """

    def __init__(self, hidden_size: int, num_heads: int, *, gate: str = "gla", head_dim_k: Optional[int] = None,
                 head_dim_v: Optional[int] = None, gate_rank: int = 16, chunk_size: int = 64, norm_eps: float = 1e-6,
                 device=None, dtype=None):
        super().__init__()
        if gate not in ("gla", "scalar", "retnet", "none"):
            raise ValueError(f"LinearAttention: gate must be 'gla', 'scalar', 'retnet' or 'none', got {gate!r}")
        kw = dict(device=device, dtype=dtype)
        self.h, self.gate, self.chunk_size = num_heads, gate, chunk_size
        self.dk = head_dim_k or hidden_size // num_heads
        self.dv = head_dim_v or hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, num_heads * self.dk, bias=False, **kw)
        self.k_proj = nn.Linear(hidden_size, num_heads * self.dk, bias=False, **kw)
        self.v_proj = nn.Linear(hidden_size, num_heads * self.dv, bias=False, **kw)
        self.o_proj = nn.Linear(num_heads * self.dv, hidden_size, bias=False, **kw)
        self.norm = RMSNorm(self.dv, eps=norm_eps, **kw)
        if gate == "gla":
            self.g_proj = nn.Sequential(nn.Linear(hidden_size, gate_rank, bias=False, **kw),
                                        nn.Linear(gate_rank, num_heads * self.dk, bias=True, **kw))
        elif gate == "scalar":
            self.g_proj = nn.Linear(hidden_size, num_heads, bias=True, **kw)
        elif gate == "retnet":
            self.register_buffer("decay", retnet_decay(num_heads).to(device=device), persistent=False)

    def _gate(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        B, T, _ = x.shape
        if self.gate == "gla":
            return F.logsigmoid(self.g_proj(x).float()).view(B, T, self.h, self.dk) / 16
        if self.gate == "scalar":
            return F.logsigmoid(self.g_proj(x).float()) / 16
        return self.decay if self.gate == "retnet" else None

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.dk)
        k = self.k_proj(x).view(B, T, self.h, self.dk)
        v = self.v_proj(x).view(B, T, self.h, self.dv)
        o, final = linear_attn(q, k, v, self._gate(x), initial_state=state, output_final_state=True,
                               chunk_size=self.chunk_size)
        return self.o_proj(self.norm(o).reshape(B, T, self.h * self.dv)), final


class MinGRU(nn.Module):
    """minGRU ("Were RNNs All We Needed?"): ``h_t = (1 - z_t) h_{t-1} + z_t h~_t`` with
    ``z = sigmoid(W_z x)``, ``h~ = W_h x``, computed for the whole sequence by :func:`kernkit.linear_scan`."""

    def __init__(self, dim: int, hidden: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, 2 * hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        gate, cand = self.proj(x).chunk(2, -1)
        z = torch.sigmoid(gate)
        return linear_scan((1 - z).contiguous(), (z * cand).contiguous(), h0)


class MambaMixer(nn.Module):
    """Mamba (S6) block mixer: in_proj -> causal depthwise conv1d + SiLU -> selective scan with a
    SiLU(z) gate -> out_proj, on :func:`kernkit.causal_conv1d` and :func:`kernkit.selective_scan`.
    ``forward(x, state)`` with a state ``(conv_state, ssm_state)`` continues a sequence (streaming)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False, **kw)
        self.conv_weight = nn.Parameter(torch.randn(self.d_inner, d_conv, **kw) / math.sqrt(d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(self.d_inner, **kw))
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).to(device))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **kw)

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False):
        B, L, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)                              # (B, 2 d_inner, L)
        xs, z = xz[:, : self.d_inner].contiguous(), xz[:, self.d_inner:].contiguous()
        conv_state, ssm_state = state if state is not None else (None, None)
        xs, conv_state = causal_conv1d(xs, self.conv_weight.to(xs.dtype), self.conv_bias.to(xs.dtype),
                                       activation="silu", initial_state=conv_state, return_final_state=True)
        dbc = self.x_proj(xs.transpose(1, 2))                              # (B, L, dt_rank + 2N)
        dt, Bm, Cm = dbc.split([self.dt_rank, self.d_state, self.d_state], -1)
        delta = (dt @ self.dt_proj.weight.t().to(dt.dtype)).transpose(1, 2).contiguous()
        y, ssm_state = selective_scan(xs, delta, -torch.exp(self.A_log.float()), Bm.transpose(1, 2).contiguous(),
                                      Cm.transpose(1, 2).contiguous(), D=self.D.float(), z=z,
                                      delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                      initial_state=ssm_state, return_last_state=True)
        out = self.out_proj(y.transpose(1, 2))
        return (out, (conv_state, ssm_state)) if return_state else out


class BitLinear(nn.Module):
    """BitNet-style linear layer with 1.58-bit (ternary) or 1-bit (binary) weights.

    Training: the layer keeps full-precision shadow weights; the forward quantises them
    (absmean ternary) and runs the int8 kernel (``act_bits=8``, BitNet b1.58) or the float-
    activation kernel (``act_bits=None``); the backward is the straight-through estimator
    (``dX`` through the ternary weights, ``dW`` dense; NaN or inf shadow weights raise
    ``ValueError`` instead of packing garbage). ``to_inference()`` replaces the shadow
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
        if isinstance(x, torch.Tensor) and (x.dim() == 0 or x.shape[-1] != self.in_features):
            raise ValueError(f"BitLinear: x has shape {tuple(x.shape)}, expected (..., {self.in_features})")
        if self.inference:
            if self.weight_bits == 1:
                return binary_linear(x, self.packed, self.scale, self.bias, binarize_input=self.act_bits == 1,
                                     in_features=self.in_features)
            return ternary_linear(x, self.packed, self.scale, self.bias, act_bits=self.act_bits,
                                  in_features=self.in_features)
        if self.weight_bits == 1:
            raise RuntimeError("BitLinear: binary layers run packed; call to_inference() first")
        return _BitLinearFn.apply(x, self.weight, self.bias, self.act_bits)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, packed={self.inference}")
