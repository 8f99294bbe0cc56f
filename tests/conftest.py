import os

import pytest
import torch

import kernkit

# The tests must exercise the installed wheel, never the source tree.
_SRC = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "python"))
assert not os.path.realpath(kernkit.__file__).startswith(_SRC) or os.environ.get("KERNKIT_ALLOW_SOURCE_TREE"), (
    f"kernkit was imported from the source tree ({kernkit.__file__}); install it and run from elsewhere"
)

ISA_ORDER = ["scalar", "avx2", "avx512"]
_INFO = kernkit.info()
SUPPORTED_ISAS = [l for l in ISA_ORDER[: ISA_ORDER.index(_INFO["isa_supported"]) + 1] if l in _INFO["isa_compiled"]]
# KERNKIT_TEST_ISAS=avx512 (or "scalar,avx2") narrows the levels the ISA-parametrised tests run.
_WANTED = os.environ.get("KERNKIT_TEST_ISAS")
TEST_ISAS = [l for l in SUPPORTED_ISAS if not _WANTED or l in _WANTED.split(",")]
HAS_GPU = _INFO["gpu_usable"]
DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no usable CUDA GPU (or kernkit built without CUDA)")
    for item in items:
        if "cuda" in item.keywords and not HAS_GPU:
            item.add_marker(skip_cuda)


@pytest.fixture(params=TEST_ISAS)
def isa(request):
    """Runs the test at each CPU ISA level this machine supports."""
    before = kernkit.cpu_isa()
    kernkit.set_cpu_isa(request.param)
    yield request.param
    kernkit.set_cpu_isa(before)


@pytest.fixture(params=[pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    return request.param


class CudaTarget:
    """Where a CUDA-kernel test runs: on a GPU (`device` "cuda"), or in kernkit's simt emulator on
    CPU tensors (`device` "cpu"; `session.launches` records the kernels that ran)."""

    def __init__(self, kind, device, session=None):
        self.kind, self.device, self.session = kind, device, session

    def __repr__(self):
        return self.kind


# simt with its race checker, in the default thread order and in two seeded random orders (a benign
# order can hide a race); the same test bodies run on a real GPU when there is one.
CUDA_TARGETS = [pytest.param("simt", marks=pytest.mark.simt), pytest.param("simt-seed1", marks=pytest.mark.simt),
                pytest.param("simt-seed2", marks=pytest.mark.simt), pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=CUDA_TARGETS)
def gpu(request):
    """Runs a CUDA-kernel test under simt (three schedules) and on a GPU when one exists."""
    if request.param == "cuda":
        yield CudaTarget("cuda", "cuda")
        return
    from kernkit.testing import simt, simt_available

    if not simt_available():  # built with KERNKIT_BUILD_SIMT=0 (test_simt.py fails unless that was intended)
        pytest.skip("this kernkit build has no simt backend (KERNKIT_BUILD_SIMT=0)")
    seed = None if request.param == "simt" else int(request.param.rsplit("seed", 1)[1])
    with simt(seed=seed) as session:
        yield CudaTarget(request.param, "cpu", session)
