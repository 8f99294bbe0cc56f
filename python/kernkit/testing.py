"""Testing tools: simt, kernkit's CUDA kernels run on the CPU.

kernkit's CUDA sources are also compiled for the CPU into ``kernkit._simt`` (one fiber per CUDA
thread; see the README section "CUDA kernels without a GPU"). Inside ``with simt():`` every kernkit
op given CPU tensors runs its **CUDA** kernel in that emulator instead of its CPU kernel, and the
emulator checks what a GPU would only show as a wrong number or a hang: data races between the
threads of a block (racecheck), shared-memory bounds and reads of unwritten shared memory, barrier
and warp-collective misuse, deadlocks and spinning threads. Errors are ``RuntimeError``s naming
the kernel, block, thread and source line. Every op has CUDA kernels (fp64 attention, linear
attention and selective scan raise the error a GPU user gets). Setting ``KERNKIT_SIMT=1`` in the environment turns simt on for the whole process.

Example::

    >>> import torch, kernkit
    >>> from kernkit.testing import simt
    >>> a, b = torch.rand(2, 100, 8), torch.randn(2, 100, 8)
    >>> with simt(seed=1) as run:
    ...     h = kernkit.linear_scan(a, b)
    >>> run.launches[0]["kernel"]
    'linear_scan_kernel<float>'
"""

from __future__ import annotations

import contextlib
import os

import torch

from . import _C, _native

try:
    from . import _simt as _backend
except ImportError:  # built with KERNKIT_BUILD_SIMT=0
    _backend = None

__all__ = ["simt", "simt_available", "simt_selftest", "SimtSession"]

_attached = False


def simt_available() -> bool:
    """Whether this build has the simt backend (``KERNKIT_BUILD_SIMT``, on by default)."""
    return _backend is not None


def _require_backend():
    global _attached
    if _backend is None:
        raise RuntimeError("kernkit.testing.simt: this kernkit build has no simt backend (it was built with "
                           "KERNKIT_BUILD_SIMT=0); rebuild with KERNKIT_BUILD_SIMT=1")
    if not _attached:
        _C.attach_simt(_backend.entry_points())
        _attached = True
    return _backend


class SimtSession:
    """What a ``simt()`` block ran: ``launches`` lists each kernel launch as a dict with ``kernel``
    (name and template arguments), ``grid``, ``block``, ``shared_bytes`` and ``source``."""

    def __init__(self, options: dict, start: int):
        self.options = options
        self._start = start
        self._final = None

    @property
    def launches(self) -> list:
        if self._final is not None:
            return list(self._final)
        return _backend.launches()[self._start:]

    @property
    def kernels(self) -> list:
        """The names of the kernels launched, in order."""
        return [r["kernel"] for r in self.launches]


def _int_arg(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"simt: {name} must be an int, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"simt: {name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


@contextlib.contextmanager
def simt(*, racecheck: bool | None = None, seed: int | None = None, workers: int = 2, watchdog: float = 60.0,
         sm_count: int = 132):
    """Run kernkit's CUDA kernels on CPU tensors, in the emulator, for the duration of the block.

    Args:
        racecheck: check data races between the threads of a block (shared and global memory,
            RAW/WAR/WAW; within a warp ordered by ``__syncwarp`` and collectives). Default: on
            wherever the build supports it (not in the ASan build).
        seed: ``None`` runs the threads of a block in index order between barriers; an int
            resumes them in a random order seeded by it (a benign order can hide a race).
        workers: OS threads that run blocks (blocks are independent).
        watchdog: seconds a thread may run without reaching a barrier or a collective before
            it is reported as spinning.
        sm_count: the multiprocessor count the kernels see (``cudaDevAttrMultiProcessorCount``).

    Yields a :class:`SimtSession` whose ``launches`` record what ran. Blocks nest; the inner
    options apply inside the inner block.
    """
    backend = _require_backend()
    if racecheck is None:
        racecheck = bool(backend.instrumented())
    if not isinstance(racecheck, bool):
        raise TypeError(f"simt: racecheck must be a bool, got {type(racecheck).__name__}")
    if seed is not None:
        _int_arg("seed", seed, 0, 2**62)
    _int_arg("workers", workers, 1, 64)
    _int_arg("sm_count", sm_count, 1)
    if isinstance(watchdog, bool) or not isinstance(watchdog, (int, float)) or not watchdog > 0:
        raise ValueError(f"simt: watchdog must be a positive number of seconds, got {watchdog!r}")
    prev_opts, prev_session = backend.options(), _native.simt_session
    backend.configure(racecheck=racecheck, seed=-1 if seed is None else seed, workers=workers,
                      watchdog_s=float(watchdog), sm_count=sm_count)
    session = SimtSession(backend.options(), len(backend.launches()))
    _native.simt_session = session
    try:
        yield session
    finally:
        session._final = backend.launches()[session._start:]
        _native.simt_session = prev_session
        backend.configure(**prev_opts)
        if prev_session is None:
            backend.clear_launches()


def _env_session():
    """KERNKIT_SIMT=1: simt for the whole process (KERNKIT_SIMT_SEED, KERNKIT_SIMT_RACECHECK=0/1)."""
    if os.environ.get("KERNKIT_SIMT", "").strip() not in ("1", "true", "yes", "on"):
        return None
    seed = os.environ.get("KERNKIT_SIMT_SEED", "").strip()
    race = os.environ.get("KERNKIT_SIMT_RACECHECK", "").strip()
    cm = simt(seed=int(seed) if seed else None, racecheck=None if not race else race not in ("0", "false", "no"))
    cm.__enter__()
    return cm


_ENV_SESSION = _env_session()  # kept referenced: it stays active until the process ends


# --------------------------------------------------------------------------- self-test

def _check(checks, name, ok, detail=""):
    checks.append({"name": name, "ok": bool(ok), "detail": detail})


def _conversion_checks(backend, checks):
    """Our host __half / __nv_bfloat16 conversions against torch's (round to nearest even)."""
    u16 = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    for kind, dt, name in ((1, torch.float16, "half"), (3, torch.bfloat16, "bfloat16")):
        out = torch.empty(65536, dtype=torch.float32)
        backend.convert_bits(kind, u16.data_ptr(), out.data_ptr(), 65536)
        ref = u16.view(dt).float()
        nan = ref.isnan()
        bad = (~nan & (out.view(torch.int32) != ref.view(torch.int32))) | (nan != out.isnan())
        _check(checks, f"{name} -> float, all 65536 patterns", not bad.any(), f"{int(bad.sum())} mismatches")
    # float -> 16 bit: every 97th bit pattern (all exponents, many mantissas) plus the ties around each
    # representable 16-bit value's midpoint
    pats = torch.arange(0, 2**32, 97, dtype=torch.int64)
    mids = torch.arange(0, 2**16, dtype=torch.int64) << 16
    pats = torch.cat([pats, mids | 0x8000, mids | 0x7fff, mids | 0x8001, mids + 0x1000]) & 0xffffffff
    f32 = pats.to(torch.int64).sub(torch.where(pats >= 2**31, 2**32, 0)).to(torch.int32).view(torch.float32)
    for kind, dt, name in ((0, torch.float16, "half"), (2, torch.bfloat16, "bfloat16")):
        out = torch.empty(f32.numel(), dtype=torch.int16)
        backend.convert_bits(kind, f32.data_ptr(), out.data_ptr(), f32.numel())
        ref = f32.to(dt)
        nan = ref.isnan()
        got = out.view(dt)
        bad = (~nan & (got.view(torch.int16) != ref.view(torch.int16))) | (nan != got.isnan())
        _check(checks, f"float -> {name}, {f32.numel()} patterns incl. rounding ties", not bad.any(),
               f"{int(bad.sum())} mismatches")


def attention_block_reference(q, k, v, scale):
    """fp64 softmax(q k^T * scale) v for the self-test's FlashAttention-like block."""
    p = torch.softmax(q.double() @ k.double().t() * scale, dim=-1)
    return p @ v.double()


def _attention_block_check(backend, checks):
    g = torch.Generator().manual_seed(1)
    for n_tiles in (1, 3):
        q, k, v = (torch.randn(n, 64, generator=g).to(torch.bfloat16) for n in (64, 64 * n_tiles, 64 * n_tiles))
        o = torch.empty(64, 64)
        with simt(seed=3):
            backend.attention_block(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), n_tiles, 0.125)
        exact = attention_block_reference(q, k, v, 0.125)
        # P is rounded to bf16 before P V, as in FlashAttention: compare with that precision's error
        same = (torch.softmax(q.float() @ k.float().t() * 0.125, -1).to(torch.bfloat16).float() @ v.float())
        err, ref_err = (o.double() - exact).abs().max().item(), (same.double() - exact).abs().max().item()
        _check(checks, f"FlashAttention-like block (cp.async, ldmatrix(.trans), mma, quad shuffles, online "
               f"softmax), {n_tiles} KV tile(s), vs torch", err <= 2 * ref_err + 1e-3,
               f"max error {err:.3g} (bf16-P reference {ref_err:.3g})")


def _planted_checks(backend, checks):
    for r in backend.planted_bugs():
        msg, fixed = r["message"], r["fixed_message"]
        want_lines = [f"{r['file']}:{line}" for line in r["lines"]]
        found = bool(msg) and f"simt: {r['expected_kind']} " in msg and all(w in msg for w in want_lines)
        _check(checks, f"planted bug reported: {r['name']}", found,
               f"expected '{r['expected_kind']}' naming {', '.join(want_lines)}; got: {msg or 'no report'}")
        _check(checks, f"fixed kernel runs clean: {r['name']}", not fixed, fixed or "clean")


def _fragment_checks(backend, checks):
    for name, ok, detail in backend.fragment_checks():
        _check(checks, name, ok, detail)
    g = torch.Generator().manual_seed(0)
    for kind, dt, k in (("bf16", torch.bfloat16, 16), ("f16", torch.float16, 16), ("s8", torch.int8, 32)):
        if dt == torch.int8:
            a, b = (torch.randint(-128, 128, s, generator=g, dtype=torch.int32) for s in ((16, k), (k, 8)))
            c = torch.randint(-1000, 1000, (16, 8), generator=g, dtype=torch.int32).double()
            a_bits, b_bits = a.flatten().tolist(), b.t().contiguous().flatten().tolist()
            a, b = a.double(), b.double()
        else:
            a, b = (torch.randn(s, generator=g).to(dt) for s in ((16, k), (k, 8)))
            c = torch.randn(16, 8, generator=g, dtype=torch.float64)
            bb = b if kind == "bf16" else b.t().contiguous()  # bf16 loads B (K x N) with ldmatrix.trans
            a_bits, b_bits = ((t.flatten().view(torch.int16).int() & 0xffff).tolist() for t in (a, bb))
            a, b, c = a.double(), b.double(), c.float().double()
        d = torch.tensor(backend.gemm_tile(kind, a_bits, b_bits, c.flatten().tolist()), dtype=torch.float64)
        ref = (torch.matmul(a, b) + c).flatten()
        if dt == torch.int8:
            ref = ((ref.long() + 2**31) % 2**32 - 2**31).double()  # int32 accumulators wrap
            err, tol = (d - ref).abs().max().item(), 0.0
        else:  # one rounding of the exact sum to fp32
            err, tol = ((d - ref).abs() / ref.abs().clamp_min(1e-30)).max().item(), 2.0**-23
        _check(checks, f"one-warp GEMM tile m16n8k{k} {kind} vs torch.matmul", err <= tol,
               f"max {'relative ' if dt != torch.int8 else ''}error {err:.3g}")


def simt_selftest() -> dict:
    """Checks the emulator itself and returns ``{"ok": bool, "checks": [{"name", "ok", "detail"}]}``:
    half/bf16 conversions vs torch; tensor-core fragment layouts of every PTX wrapper vs the PTX
    ISA tables and vs CuTe's published MMA/ldmatrix atom layouts; one-warp GEMM tiles per mma
    shape vs ``torch.matmul``; planted bugs (missing barrier, missing ``__syncwarp``, tile reload
    race, global write race, wrong shuffle lane, early return before a barrier, shared
    out-of-bounds, uninitialised shared read, divergent barrier, divergent collectives, deadlock,
    spinning thread) each reported with the right kind and source line, and their fixed versions
    silent. Bugs found through the access hooks are not checked in the sanitizer build."""
    backend = _require_backend()
    checks: list = []
    _conversion_checks(backend, checks)
    _fragment_checks(backend, checks)
    _attention_block_check(backend, checks)
    _planted_checks(backend, checks)
    return {"ok": all(c["ok"] for c in checks), "instrumented": bool(backend.instrumented()), "checks": checks}
