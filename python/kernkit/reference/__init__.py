"""Plain-PyTorch reference implementations: slow, obviously correct, used by
the tests and benchmarks to check and time the kernels."""

from .norm import rms_norm_ref

__all__ = ["rms_norm_ref"]
