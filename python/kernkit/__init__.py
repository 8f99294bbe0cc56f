"""kernkit: compiled attention, linear-attention, state-space and low-bit
kernels for PyTorch, on CPU (AVX2/AVX-512, run-time dispatch) and CUDA.

Importing kernkit imports torch first: the compiled core looks up torch's
OpenMP runtime so that both share one thread pool."""

import torch  # noqa: F401  (loads torch's OpenMP runtime before _C looks for it)

from ._native import cpu_isa, info, set_cpu_isa
from .attention import flash_attn, flash_attn_varlen, flash_attn_with_kvcache
from .linear_attn import linear_attn, linear_attn_step, retnet_decay
from .lowbit import (binary_linear, binary_pack, binary_quantize, binary_unpack, ternary_linear, ternary_pack,
                     ternary_quantize, ternary_unpack)
from .norm import rms_norm
from .scan import causal_conv1d, causal_conv1d_update, linear_scan, selective_scan
from . import distributed, nn, reference, testing

__version__ = info()["version"]

__all__ = [
    "__version__", "info", "cpu_isa", "set_cpu_isa",
    "flash_attn", "flash_attn_varlen", "flash_attn_with_kvcache",
    "linear_attn", "linear_attn_step", "retnet_decay",
    "rms_norm", "linear_scan", "causal_conv1d", "causal_conv1d_update", "selective_scan",
    "ternary_quantize", "ternary_pack", "ternary_unpack", "ternary_linear",
    "binary_quantize", "binary_pack", "binary_unpack", "binary_linear",
    "distributed", "nn", "reference", "testing",
]
