"""Loads the compiled core (kernkit._C) and holds the small helpers every op
family uses to hand tensors to it: dtype codes, data pointers, and the launch
arguments (CPU thread count, or CUDA device and stream)."""

from __future__ import annotations

import os

import torch

from . import _C

# Keep in sync with enum class DType in csrc/common/dtype.h.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
FLOAT_DTYPES = tuple(DTYPE_CODES)

CUDA_COMPILED: bool = bool(_C.info()["cuda_compiled"])


def set_cpu_isa(level: str) -> None:
    """Select the CPU kernel level: ``"scalar"``, ``"avx2"`` or ``"avx512"``.

    Only levels this CPU (and build) supports can be chosen; an unknown name
    raises ``ValueError``, an unsupported level ``RuntimeError``."""
    if not isinstance(level, str):
        raise TypeError(f"set_cpu_isa: level must be a str, got {type(level).__name__}")
    _C.set_cpu_isa(level.strip().lower())


def cpu_isa() -> str:
    """The CPU kernel level in use."""
    return _C.cpu_isa()


def _apply_env_isa() -> None:
    level = os.environ.get("KERNKIT_CPU_ISA", "").strip()
    if level:
        set_cpu_isa(level)


_apply_env_isa()


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


_HUGE_PAGE_MIN_BYTES = 4 << 20


def advise_large(t: torch.Tensor) -> torch.Tensor:
    """Returns t, a freshly allocated kernel output, after advising a large CPU buffer onto
    2 MiB pages before the kernel first touches it: each large torch.empty is a fresh mmap,
    and 4 KiB first-touch faults cost more than writing the data (``_C.advise_huge_pages``).
    Callers allocate as before (e.g. ``empty_like`` keeps the input's strides, which the fake
    implementations mirror)."""
    if t.is_cpu:
        nbytes = t.numel() * t.element_size()
        if nbytes >= _HUGE_PAGE_MIN_BYTES:
            _C.advise_huge_pages(t.data_ptr(), nbytes)
    return t


# Device code _C understands as "CPU tensors, CUDA kernels run by simt" (kSimtDevice in
# csrc/common/cuda_entry.h). kernkit.testing.simt() sets simt_session while it is active.
SIMT_DEVICE = -2
simt_session = None


def uses_cuda_kernels(t: torch.Tensor) -> bool:
    """Whether an op on t runs kernkit's CUDA kernels: a CUDA tensor, or a CPU tensor under
    kernkit.testing.simt()."""
    return t.is_cuda or (simt_session is not None and t.is_cpu)


def launch_args(t: torch.Tensor) -> tuple[int, int, int]:
    """(threads, device, stream) for a kernel working on tensors on t's device; under
    kernkit.testing.simt(), CPU tensors go to the CUDA kernels run by the emulator."""
    if t.is_cuda:
        if simt_session is not None:
            raise RuntimeError("kernkit.testing.simt() is active: it runs kernkit's CUDA kernels on CPU tensors, "
                               "but got a CUDA tensor (leave the simt() block to use the GPU)")
        return 0, t.device.index, torch.cuda.current_stream(t.device).cuda_stream
    if simt_session is not None:
        return torch.get_num_threads(), SIMT_DEVICE, 0
    return torch.get_num_threads(), -1, 0


def info() -> dict:
    """What this build of kernkit can do here: version, CPU ISA levels compiled,
    supported and selected, CUDA kernels and archs, GPU availability, threads."""
    native = _C.info()
    gpu_usable = bool(native["cuda_compiled"]) and torch.cuda.is_available()
    return {
        "version": native["version"],
        "torch": torch.__version__,
        "isa_compiled": list(native["isa_compiled"]),
        "isa_supported": native["isa_supported"],
        "isa_selected": native["isa_selected"],
        "cpu_vendor": native["cpu_vendor"],
        "cuda_compiled": bool(native["cuda_compiled"]),
        "cuda_archs": [a for a in str(native["cuda_archs"]).split(",") if a],
        "cuda_runtime": int(native["cuda_runtime"]),
        "gpu_usable": gpu_usable,
        "gpu_name": torch.cuda.get_device_name() if gpu_usable else None,
        "threads": torch.get_num_threads(),
        "thread_backend": native["thread_backend"],
        "adaptive_threads": bool(native["adaptive_threads"]),
        "simt": _simt_built(),
    }


def _simt_built() -> bool:
    """Whether kernkit._simt (CUDA kernels run on the CPU, kernkit.testing.simt) is installed."""
    import importlib.util

    return importlib.util.find_spec(f"{__package__}._simt") is not None
