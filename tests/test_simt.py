"""simt: kernkit's CUDA kernels run on the CPU by the emulator (kernkit.testing). The kernels'
own reference suites run through the `gpu` fixture in test_norm.py / test_scan.py; this file
checks the emulator itself and how it is used."""

import os
import subprocess
import sys

import pytest
import torch

import kernkit
from kernkit import testing
from kernkit.reference import causal_conv1d_ref, linear_scan_ref, rms_norm_ref

pytestmark = pytest.mark.simt

needs_simt = pytest.mark.skipif(not testing.simt_available(), reason="built without the simt backend")


def test_simt_is_built():
    # CUDA kernels are only tested here through simt: a build without it must be a deliberate choice.
    assert testing.simt_available() or os.environ.get("KERNKIT_BUILD_SIMT") == "0", \
        "kernkit._simt is missing: the CUDA kernels' tests would all be skipped"
    assert kernkit.info()["simt"] == testing.simt_available()


@needs_simt
def test_selftest_passes():
    report = testing.simt_selftest()
    bad = [c for c in report["checks"] if not c["ok"]]
    assert not bad, "\n".join(f"{c['name']}: {c['detail']}" for c in bad)
    names = " ".join(c["name"] for c in report["checks"])
    for planted in ("wrong lane", "early return", "divergent barrier", "divergent collectives", "deadlock"):
        assert planted in names
    hooked = ("missing barrier", "missing __syncwarp", "tile reloaded", "global write race", "shared out of bounds",
              "uninitialised shared read", "spinning thread")
    if report["instrumented"]:  # found through the access hooks (not in the sanitizer build)
        assert all(p in names for p in hooked)
    for what in ("float -> bfloat16", "PTX ISA table == CuTe", "one-warp GEMM tile m16n8k32 s8",
                 "FlashAttention-like block"):
        assert what in names


@needs_simt
def test_acceptance_examples_run_the_cuda_kernels():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 50, 8, generator=g), torch.randn(2, 50, 8, generator=g)
    with testing.simt() as run:
        h = kernkit.linear_scan(a, b)
    assert run.kernels == ["linear_scan_kernel<float>"]
    rec = run.launches[0]
    assert rec["grid"] == (1, 1, 1) and rec["block"] == (256, 1, 1) and rec["shared_bytes"] == 0
    assert rec["source"].startswith("scan/cuda/linear_scan.cu:")
    torch.testing.assert_close(h, linear_scan_ref(a, b), rtol=1e-5, atol=1e-5)

    x = torch.randn(5, 40, generator=g, requires_grad=True)
    w = torch.randn(40, generator=g, requires_grad=True)
    with testing.simt() as run:
        kernkit.rms_norm(x, w).square().sum().backward()
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    rms_norm_ref(xr, wr, 1e-6).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)
    assert "rms_norm_dw_reduce_kernel<float, float>" in run.kernels

    x = torch.randn(2, 3, 30, generator=g, requires_grad=True)
    cw = torch.randn(3, 4, generator=g, requires_grad=True)
    with testing.simt(seed=5) as run:
        y = kernkit.causal_conv1d(x, cw, activation="silu")
        y.sum().backward()
    torch.testing.assert_close(y, causal_conv1d_ref(x, cw, activation="silu"), rtol=1e-5, atol=1e-5)
    assert run.kernels == ["conv_fwd_kernel<float>", "conv_dx_kernel<float>", "conv_dw_kernel<float>"]
    # outside the block: the CPU kernels again, nothing more recorded
    kernkit.linear_scan(a, b)
    assert len(run.launches) == 3


@needs_simt
def test_options_nesting_and_validation():
    from kernkit import _simt

    base = _simt.options()
    with testing.simt(seed=3, workers=1, watchdog=5.0, sm_count=8) as outer:
        assert _simt.options()["seed"] == 3 and _simt.options()["workers"] == 1
        with testing.simt(racecheck=False):
            assert _simt.options()["racecheck"] is False and _simt.options()["seed"] == -1
            kernkit.linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2))
        assert _simt.options()["seed"] == 3
        kernkit.linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2))
        assert len(outer.launches) == 2  # the inner block's launch is part of the outer record
    assert _simt.options() == base
    for kw, exc in ((dict(seed=-1), ValueError), (dict(seed=1.5), TypeError), (dict(workers=0), ValueError),
                    (dict(watchdog=0), ValueError), (dict(racecheck="yes"), TypeError), (dict(sm_count=0), ValueError)):
        with pytest.raises(exc):
            with testing.simt(**kw):
                pass
    assert _simt.options() == base


def test_simt_requested_but_not_built(monkeypatch):
    monkeypatch.setattr(testing, "_backend", None)
    assert not testing.simt_available()
    with pytest.raises(RuntimeError, match="no simt backend"):
        with testing.simt():
            pass
    with pytest.raises(RuntimeError, match="no simt backend"):
        testing.simt_selftest()


def test_native_layer_without_the_backend_attached():
    # A fresh process that never entered simt(): _C refuses the simt device instead of crashing.
    code = ("import kernkit, torch\n"
            "x = torch.ones(2, 2); y = torch.empty(2, 2); r = torch.empty(2)\n"
            "try:\n"
            "    kernkit._C.rms_norm_fwd(x.data_ptr(), 0, y.data_ptr(), r.data_ptr(), 2, 2, 1e-6, 0, 0, 1, -2, 0)\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("KERNKIT_SIMT")})
    assert "simt backend is not loaded" in out.stdout.splitlines()[-1], out.stdout + out.stderr


@needs_simt
def test_env_var_turns_simt_on_for_the_process():
    code = ("import kernkit, torch\n"
            "from kernkit import testing, _native\n"
            "assert _native.simt_session is not None\n"
            "kernkit.linear_scan(torch.rand(1, 4, 3), torch.rand(1, 4, 3))\n"
            "print(testing._backend.launches()[-1]['kernel'], testing._backend.options()['seed'])\n")
    env = dict(os.environ, KERNKIT_SIMT="1", KERNKIT_SIMT_SEED="7")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.splitlines()[-1:] == ["linear_scan_kernel<float> 7"], out.stdout + out.stderr


@needs_simt
def test_errors_are_reported_not_crashes():
    # A planted race inside a real launch surfaces as RuntimeError with kernel, block, thread and lines;
    # the process and later launches are unaffected.
    from kernkit import _simt

    r = {x["name"]: x for x in _simt.planted_bugs()}
    if testing._backend.instrumented():
        msg = r["missing barrier"]["message"]
        assert msg.startswith("simt: racecheck in kernel missing_barrier") and "block (0,0,0)" in msg
        assert "thread (" in msg and "[warp " in msg
    with testing.simt():
        h = kernkit.linear_scan(torch.rand(1, 5, 2), torch.rand(1, 5, 2))
    assert torch.isfinite(h).all()


@needs_simt
@pytest.mark.skipif(testing.simt_available() and testing._backend.instrumented(),
                    reason="global-memory bounds under simt come from ASan, in the sanitizer build")
def test_asan_reports_global_out_of_bounds_in_a_kernel():
    # The sanitizer build compiles the emulated kernels with ASan: an out-of-bounds global read in a
    # kernel stops the process with ASan's report naming the kernel's source line.
    from kernkit import _simt

    line = _simt.planted_global_out_of_bounds(run=False)
    code = "from kernkit import _simt\n_simt.planted_global_out_of_bounds()\nprint('not detected')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "not detected" not in out.stdout, out.stdout + out.stderr[-2000:]
    assert "AddressSanitizer" in out.stderr and "heap-buffer-overflow" in out.stderr, out.stderr[-2000:]
    assert f"planted.cu:{line}" in out.stderr, out.stderr[-3000:]


@pytest.mark.cuda
def test_cuda_tensors_under_simt_are_rejected():
    with testing.simt():
        with pytest.raises(RuntimeError, match="got a CUDA tensor"):
            kernkit.linear_scan(torch.rand(1, 3, 2, device="cuda"), torch.rand(1, 3, 2, device="cuda"))


@needs_simt
def test_golden_fragment_comparison_machinery():
    # scripts/gpu_check.sh compares a GPU's captures with the emulator's through this function; the
    # emulator compared with itself must agree everywhere, and a corrupted capture must not.
    from kernkit import _simt

    caps = _simt.captures()
    assert all(ok for _, ok, _ in _simt.compare_captures(caps))
    caps["mma_s8"][5] ^= 1
    caps["ldmatrix_x4_trans"][0] ^= 1 << 16
    bad = [name for name, ok, _ in _simt.compare_captures(caps) if not ok]
    assert any("s8" in n for n in bad) and any("trans" in n or "x4" in n for n in bad), bad
