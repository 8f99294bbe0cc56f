"""Argument checks shared by the public functions. Each raises the exception
type the project promises (TypeError for dtypes and types, ValueError for
shapes and values, RuntimeError for devices and unsupported features) with a
message that names the function and the argument."""

from __future__ import annotations

import math
import numbers

import torch

from ._native import CUDA_COMPILED, FLOAT_DTYPES


def tensor(fn: str, name: str, t, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn}: {name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {allowed}")
    if t.is_cpu:   # the common case first: Tensor.device builds an object (~0.3 us a call)
        return t
    dev = t.device.type
    if dev == "cuda":
        if not CUDA_COMPILED:
            raise RuntimeError(
                f"{fn}: {name} is a CUDA tensor, but this kernkit build has no CUDA kernels "
                "(it was built without nvcc or with KERNKIT_BUILD_CUDA=0)"
            )
    elif dev not in ("cpu", "meta"):
        raise RuntimeError(f"{fn}: {name} is on device '{dev}'; kernkit supports cpu and cuda tensors")
    return t


def contiguous(fn: str, name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"{fn}: {name} must be contiguous (got shape {tuple(t.shape)}, strides {t.stride()}); "
            f"call .contiguous() first"
        )


def same_device(fn: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.is_cpu and ref.is_cpu:
        return
    if t.device != ref.device:
        raise RuntimeError(f"{fn}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def finite_float(fn: str, name: str, v, *, min_value: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{fn}: {name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (min_value is not None and v < min_value):
        bound = "" if min_value is None else f" and >= {min_value}"
        raise ValueError(f"{fn}: {name} must be finite{bound}, got {v}")
    return v


def cu_seqlens(fn: str, name: str, cu, total: int, *, with_longest: bool = False):
    """Packed-sequence offsets: 1-D int32 or int64 (flash-linear-attention's convention), starting
    at 0, non-decreasing, ending at `total`. Returns them as a contiguous int32 tensor (what the
    kernels read); with_longest, also the longest sequence's length (None for meta tensors), read
    from the same host copy (one device sync in all for CUDA offsets)."""
    tensor(fn, name, cu, dtypes=(torch.int32, torch.int64))
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{fn}: {name} must be a 1-D int32 or int64 tensor of batch+1 offsets")
    longest = None
    if cu.device.type != "meta":
        c = cu.cpu()
        lens = c[1:] - c[:-1]
        if int(c[0]) != 0 or int(c[-1]) != total or bool((lens < 0).any()):
            raise ValueError(f"{fn}: {name} must start at 0, be non-decreasing and end at {total} "
                             "(the packed length)")
        longest = int(lens.max()) if lens.numel() else 0
    cu = cu.to(torch.int32).contiguous()
    return (cu, longest) if with_longest else cu


def integral(fn: str, name: str, v) -> int:
    """An integer argument given as a Python int, a numpy integer or a 0-d integer tensor (as
    flash-attn's callers often pass them); bools and floats are rejected."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} must be an int (or a 0-d integer tensor), got a tensor of shape "
                            f"{tuple(v.shape)} and dtype {str(v.dtype).replace('torch.', '')}")
        return int(v.item())
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    return int(v)


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may look at t's values: not for meta tensors, and not while
    torch.compile traces (a data-dependent branch would break the graph)."""
    return t.numel() > 0 and t.device.type != "meta" and not torch.compiler.is_compiling()
