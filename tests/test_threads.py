"""Thread pools: every op gives bitwise the same result on torch's OpenMP pool, on
kernkit's own pool and on one thread, whatever the thread count; kernkit's pool
survives fork; the busy-machine check notices other processes taking the cores
(and then runs regions on the calling thread) and lets go when they stop."""

import hashlib
import multiprocessing
import os
import time

import pytest
import torch

import kernkit
from kernkit import _C


def _ops_results():
    """Forward and backward outputs of one call of each parallel op family."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    out = []

    x, w, dy = r(300, 200), r(200), r(300, 200)
    x.requires_grad_(), w.requires_grad_()
    y = kernkit.rms_norm(x, w)
    out += [y, *torch.autograd.grad(y, (x, w), dy)]

    wt = r(1000, 700)
    packed, scale = kernkit.ternary_quantize(wt)
    out += [kernkit.ternary_linear(r(3, 700), packed, scale), kernkit.ternary_linear(r(70, 700), packed, scale,
                                                                                     act_bits=None)]
    bpacked, alpha = kernkit.binary_quantize(wt)
    out += [kernkit.binary_linear(r(5, 700), bpacked, alpha, binarize_input=True)]

    q, k, v = (r(2, 130, 4, 64, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    o = kernkit.flash_attn(q, k, v, causal=True)
    out += [o, *torch.autograd.grad(o, (q, k, v), torch.ones_like(o))]
    qd, kc, vc = r(2, 1, 8, 64), r(2, 1500, 2, 64), r(2, 1500, 2, 64)
    out += [kernkit.flash_attn_with_kvcache(qd, kc, vc, torch.tensor([1500, 700], dtype=torch.int32))]

    u, dt = r(2, 64, 300), torch.rand(2, 64, 300, generator=g) * 0.1
    A, B, C = -torch.rand(64, 16, generator=g), r(2, 16, 300), r(2, 16, 300)
    ins = [t.requires_grad_() for t in (u, dt, A, B, C)]
    ys = kernkit.selective_scan(*ins)
    out += [ys, *torch.autograd.grad(ys, ins, torch.ones_like(ys))]

    ql, kl, vl = (r(2, 200, 3, 32).requires_grad_() for _ in range(3))
    gl = (-torch.rand(2, 200, 3, generator=g)).requires_grad_()
    ol, _ = kernkit.linear_attn(ql, kl, vl, gl)
    out += [ol, *torch.autograd.grad(ol, (ql, kl, vl, gl), torch.ones_like(ol))]

    xc, wc = r(2, 64, 500).requires_grad_(), r(64, 4).requires_grad_()
    yc = kernkit.causal_conv1d(xc, wc, activation="silu")
    out += [yc, *torch.autograd.grad(yc, (xc, wc), torch.ones_like(yc))]
    return [t.detach() for t in out]


def _backends():
    names = ["kernkit"]
    if "OpenMP" in torch.__config__.parallel_info():
        names.append("gomp")
    return names


@pytest.fixture
def restore_threads():
    before_threads, before_backend = torch.get_num_threads(), kernkit.info()["thread_backend"]
    yield
    torch.set_num_threads(before_threads)
    _C.set_thread_backend(before_backend)
    _C.set_adaptive_threads(True)


def test_results_identical_across_pools_and_thread_counts(restore_threads):
    torch.set_num_threads(1)
    want = _ops_results()
    for backend in _backends():
        _C.set_thread_backend(backend)
        for threads in (2, 3, 5):  # 3 and 5 oversubscribe the 2-core CI machine
            torch.set_num_threads(threads)
            got = _ops_results()
            for i, (a, b) in enumerate(zip(want, got)):
                assert torch.equal(a, b), f"result {i} differs on {backend} with {threads} threads"


def test_set_thread_backend(restore_threads):
    _C.set_thread_backend("kernkit")
    assert kernkit.info()["thread_backend"] == "kernkit"
    with pytest.raises(ValueError, match="unknown or unavailable backend 'tbb'"):
        _C.set_thread_backend("tbb")
    assert kernkit.info()["thread_backend"] == "kernkit"


_FORK_INPUTS = {}


def _digest(t):
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()  # numpy: no torch thread pool involved


def _child_result(queue):
    x, w = _FORK_INPUTS["x"], _FORK_INPUTS["w"]
    queue.put(_digest(kernkit.rms_norm(x, w)))


def test_own_pool_survives_fork(restore_threads):
    # A forked child has none of the parent's pool threads: it must start its own, not wait on
    # workers that do not exist. (The child runs no torch op that would use torch's OpenMP pool:
    # libgomp itself hangs in a child forked after the parent used it.)
    _C.set_thread_backend("kernkit")
    torch.set_num_threads(2)
    _FORK_INPUTS["x"], _FORK_INPUTS["w"] = torch.randn(512, 1024), torch.randn(1024)
    want = _digest(kernkit.rms_norm(_FORK_INPUTS["x"], _FORK_INPUTS["w"]))  # the parent's workers now exist
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_result, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("forked child hung in kernkit's thread pool")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == want


def _spin(deadline):
    while time.monotonic() < deadline:
        pass


def _poll(predicate, seconds):
    end = time.monotonic() + seconds
    x, w = torch.randn(256, 1024), torch.randn(1024)
    while time.monotonic() < end:
        kernkit.rms_norm(x, w)  # parallel regions while polling, as a user's loop would run
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_busy_machine_detected_and_released(restore_threads):
    torch.set_num_threads(2)
    _C.set_adaptive_threads(False)
    assert not _C.machine_contended()
    _C.set_adaptive_threads(True)
    assert kernkit.info()["adaptive_threads"]
    ctx = multiprocessing.get_context("fork")
    helpers = [ctx.Process(target=_spin, args=(time.monotonic() + 60,), daemon=True)
               for _ in range(2 * (os.cpu_count() or 2))]
    for p in helpers:
        p.start()
    try:
        assert _poll(_C.machine_contended, 20), "two busy processes per core went unnoticed"
    finally:
        for p in helpers:
            p.terminate()
        for p in helpers:
            p.join()
    assert _poll(lambda: not _C.machine_contended(), 20), "still serial 20 s after the load stopped"
