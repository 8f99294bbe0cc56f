"""Plain-PyTorch reference implementations: slow, obviously correct, used by
the tests and benchmarks to check and time the kernels."""

from .attention import attention_mask, flash_attn_ref, flash_attn_varlen_ref
from .lowbit import (act_quant_ref, binary_linear_ref, binary_quantize_ref, bitlinear_emulated, ternary_linear_ref,
                     ternary_quantize_ref)
from .linear_attn import linear_attn_chunk_ref, linear_attn_recurrent_ref, linear_attn_step_ref
from .norm import rms_norm_ref
from .scan import causal_conv1d_ref, causal_conv1d_update_ref, linear_scan_ref, selective_scan_ref

__all__ = ["attention_mask", "flash_attn_ref", "flash_attn_varlen_ref", "rms_norm_ref", "linear_attn_recurrent_ref",
           "linear_attn_chunk_ref", "linear_attn_step_ref", "linear_scan_ref", "causal_conv1d_ref", "causal_conv1d_update_ref", "selective_scan_ref",
           "act_quant_ref", "ternary_quantize_ref", "ternary_linear_ref", "binary_quantize_ref", "binary_linear_ref",
           "bitlinear_emulated"]
