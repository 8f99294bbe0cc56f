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
    return getattr(torch.ops.kernkit, name).default
