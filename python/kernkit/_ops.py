"""One helper to register a kernkit op with torch.library.

Every op family calls :func:`define_op` once per op. The op gets a schema in
the ``kernkit`` namespace, one implementation used for both CPU and CUDA
tensors (the implementations pass the device and stream to ``_C`` themselves),
a fake implementation for meta tensors / ``torch.compile``, and optionally an
autograd formula. The returned ``OpOverload`` is what the public functions call.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

_LIB = torch.library.Library("kernkit", "DEF")
_IMPLS: dict = {}


def _probe(name):
    try:
        return eval(name, {"torch": torch})  # noqa: S307 - fixed internal names only
    except AttributeError:
        return None


# Private torch APIs the fast path needs to prove that nothing is watching the call
# (no torch-function/dispatch mode, no functorch wrapper). If any is missing, the fast
# path is off and every call goes through the dispatcher.
_fn_mode_enabled = _probe("torch._C._is_torch_function_mode_enabled")
_dispatch_stack_len = _probe("torch._C._len_torch_dispatch_stack")
_is_functorch = _probe("torch._C._functorch.is_functorch_wrapped_tensor")
_Parameter = torch.nn.Parameter
_FAST_PATH = None not in (_fn_mode_enabled, _dispatch_stack_len, _is_functorch)


_interpreter_stack = _probe("torch._C._functorch.peek_interpreter_stack")


def _plain_now() -> bool:
    """The call-independent half of :func:`_eager_plain`: eager mode, no torch-function or dispatch
    mode, no functorch transform running. Callers still check each tensor's type, device and
    requires_grad, and take the checked path when a data pointer cannot be read (a functorch
    wrapper leaked out of its transform has no storage)."""
    return _FAST_PATH and _interpreter_stack is not None and not torch.compiler.is_compiling() \
        and not _fn_mode_enabled() and not _dispatch_stack_len() and _interpreter_stack() is None


def _eager_plain(args) -> bool:
    if not _FAST_PATH or torch.compiler.is_compiling() or _fn_mode_enabled() or _dispatch_stack_len():
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor):
            # (is_cpu / is_cuda: a.device.type builds a device object, ~5x slower per call)
            # (nn.Parameter disables torch-function overrides: as plain as a tensor for a kernel)
            if (type(a) is not torch.Tensor and type(a) is not _Parameter) or (grad and a.requires_grad) \
                    or not (a.is_cpu or a.is_cuda) \
                    or _is_functorch(a):
                return False
    return True


def call(op: torch._ops.OpOverload, *args):
    """Calls a kernkit op. In plain eager mode with no gradient needed (decode-sized calls
    are dominated by per-call overhead) the implementation runs directly; anything else —
    autograd, torch.compile, fake/meta tensors, modes, functorch transforms — goes through
    the dispatcher."""
    if _eager_plain(args):
        return _IMPLS[op](*args)
    return op(*args)


def define_op(
    schema: str,
    *,
    impl: Callable,
    fake: Callable,
    backward: Optional[Callable] = None,
    setup_context: Optional[Callable] = None,
) -> torch._ops.OpOverload:
    """Define ``kernkit::<schema>`` and register its implementations.

    schema:        e.g. ``"rms_norm_fwd(Tensor x, Tensor? weight, float eps) -> (Tensor, Tensor)"``
    impl:          runs the kernel; registered for the CPU and CUDA dispatch keys
    fake:          allocates outputs of the right shape/dtype/device without computing
    backward, setup_context: as for ``torch.library.register_autograd``
    """
    name = schema.split("(", 1)[0].strip()
    qualname = f"kernkit::{name}"
    _LIB.define(schema)
    for key in ("CPU", "CUDA"):
        _LIB.impl(name, impl, key)
    torch.library.register_fake(qualname, fake, lib=_LIB)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=_LIB)
    overload = getattr(torch.ops.kernkit, name).default
    _IMPLS[overload] = impl
    return overload
