import os
import subprocess
import sys

import pytest
import torch

import kernkit
from conftest import SUPPORTED_ISAS


def _run(code, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd="/")


def test_info_fields():
    info = kernkit.info()
    for key in ("version", "isa_compiled", "isa_supported", "isa_selected", "cuda_compiled", "cuda_archs",
                "gpu_usable", "threads", "thread_backend", "adaptive_threads", "cpu_vendor"):
        assert key in info
    assert info["cpu_vendor"] in ("intel", "amd", "other")
    assert info["version"] == kernkit.__version__
    assert info["isa_selected"] in info["isa_compiled"]
    assert info["threads"] == torch.get_num_threads()
    if info["cuda_compiled"]:
        assert info["cuda_archs"], "CUDA compiled but no archs reported"


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "kernkit"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "isa_selected" in r.stdout and kernkit.__version__ in r.stdout


@pytest.mark.parametrize("level", SUPPORTED_ISAS)
def test_env_selects_isa(level):
    code = "import kernkit, torch; print(kernkit.info()['isa_selected']);" \
           "x=torch.randn(3,37); w=torch.randn(37);" \
           "r=kernkit.reference.rms_norm_ref(x.double(), w.double());" \
           "print((kernkit.rms_norm(x,w).double()-r).abs().max().item() < 1e-5)"
    r = _run(code, KERNKIT_CPU_ISA=level)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [level, "True"]


def test_env_unknown_isa_raises():
    r = _run("import kernkit", KERNKIT_CPU_ISA="sse9")
    assert r.returncode != 0
    assert "KERNKIT_CPU_ISA" in r.stderr and "sse9" in r.stderr and "ValueError" in r.stderr


def test_set_cpu_isa_errors():
    with pytest.raises(ValueError, match="unknown ISA"):
        kernkit.set_cpu_isa("neon9")
    with pytest.raises(TypeError):
        kernkit.set_cpu_isa(3)
    best = kernkit.info()["isa_supported"]
    if best != "avx512":
        with pytest.raises(RuntimeError, match="not supported"):
            kernkit.set_cpu_isa("avx512")


def test_thread_backend_shares_torch_pool():
    # torch loads libgomp into the global scope; kernkit must find it and use
    # torch's pool rather than start a second one.
    if "OpenMP" in torch.__config__.parallel_info():
        assert kernkit.info()["thread_backend"] == "gomp"
