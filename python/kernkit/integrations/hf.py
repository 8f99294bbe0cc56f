"""kernkit as an attention implementation for Hugging Face transformers.

    >>> import kernkit.integrations.hf as kk_hf
    >>> kk_hf.register()                      # once per process
    >>> model = AutoModelForCausalLM.from_config(config, attn_implementation="kernkit")

Registers :func:`attention_forward` in transformers' ``AttentionInterface`` and, for the masks,
transformers' own flash-attention mask builder (``None`` without padding, else the 2-D padding
mask), so models call kernkit with causal / sliding-window / softcap options instead of a dense
mask. Padded batches run through :func:`kernkit.flash_attn_varlen` on the unpadded tokens (as
flash-attn does), GQA needs no repeated K/V, and decoding with a KV cache uses bottom-right causal
alignment. transformers is an optional dependency (``pip install "kernkit[hf]"``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..attention import flash_attn, flash_attn_varlen

NAME = "kernkit"


def _transformers():
    try:
        import transformers  # noqa: F401
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as e:  # pragma: no cover - exercised only without transformers
        raise ImportError("kernkit.integrations.hf needs transformers >= 4.53 (pip install 'kernkit[hf]')") from e
    return AttentionInterface, AttentionMaskInterface, flash_attention_mask


def register(name: str = NAME) -> str:
    """Registers kernkit under ``name`` for ``attn_implementation=name``; returns the name."""
    attention_interface, mask_interface, flash_mask = _transformers()
    attention_interface.register(name, attention_forward)
    mask_interface.register(name, flash_mask)
    return name


def _unsupported(kwargs) -> None:
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("kernkit attention: learned sink logits (s_aux) are not supported; "
                                  "kernkit's `sinks` are always-visible key positions")
    if kwargs.get("output_attentions"):
        raise NotImplementedError("kernkit attention does not return attention weights; use 'eager'")


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                      softcap: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """transformers' attention-function signature: query ``(B, Hq, Sq, D)``, key/value
    ``(B, Hkv, Sk, D)``, ``attention_mask`` None or a 2-D ``(B, Sk)`` padding mask (True = token).
    Returns ``(out (B, Sq, Hq, Dv), None)``."""
    _unsupported(kwargs)
    if dropout and module.training:
        raise NotImplementedError("kernkit attention has no attention dropout; set the config's "
                                  "attention_dropout to 0 for training")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    opts = dict(causal=bool(causal), scale=scaling, softcap=float(softcap or 0.0))
    if sliding_window is not None:   # transformers: query i sees keys i - sliding_window < j <= i
        opts["window"] = (int(sliding_window) - 1, -1 if causal else int(sliding_window) - 1)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))   # (B, S, H, D) views, no copies
    if attention_mask is None:
        return flash_attn(q, k, v, **opts), None
    if attention_mask.dim() != 2:
        raise ValueError("kernkit attention expects transformers' 2-D padding mask (register() installs the "
                         f"matching mask builder); got a mask of shape {tuple(attention_mask.shape)}")
    return _padded(q, k, v, attention_mask.bool(), opts), None


def _padded(q, k, v, mask, opts):
    """Unpads keys by `mask` (B, Sk) and queries by its last Sq columns, runs the varlen kernel
    (per-sequence bottom-right masks) and scatters the rows back (padded query rows give 0)."""
    B, Sq = q.shape[:2]
    if mask.shape != (B, k.shape[1]):
        raise ValueError(f"kernkit attention: padding mask {tuple(mask.shape)} does not match (batch, keys) = "
                         f"{(B, k.shape[1])}")
    q_mask = mask[:, -Sq:]
    lens_k, lens_q = mask.sum(1, dtype=torch.int32), q_mask.sum(1, dtype=torch.int32)
    zero = torch.zeros(1, dtype=torch.int32, device=q.device)
    cu_k = torch.cat([zero, lens_k.cumsum(0, dtype=torch.int32)])
    cu_q = torch.cat([zero, lens_q.cumsum(0, dtype=torch.int32)])
    out = flash_attn_varlen(q[q_mask], k[mask], v[mask], cu_q, cu_k, int(lens_q.max()), int(lens_k.max()), **opts)
    full = out.new_zeros(B, Sq, *out.shape[1:])
    full[q_mask] = out
    return full
