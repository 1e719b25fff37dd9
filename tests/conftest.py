"""Shared fixtures, markers, hypothesis profile and tolerance helpers for the gaea_ext tests."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import gaea_ext
import gaea_ext._backend

# Small and deterministic: CI has 2 cores and the whole suite must run in a few minutes.
settings.register_profile(
    "gaea",
    max_examples=int(os.environ.get("GAEA_HYPOTHESIS_EXAMPLES", "50")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
settings.load_profile("gaea")

CUDA_AVAILABLE = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="CUDA tests need a GPU")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]

# GAEA_EXT_BACKEND=reference: the suite runs on the pure-PyTorch references, on purpose.
ON_REFERENCES = gaea_ext._backend.FORCED_REFERENCE


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: test runs on a CUDA device (skipped without a GPU)")
    if not gaea_ext.HAS_EXTENSION and not ON_REFERENCES:
        # Never pass silently on the references because the kernels failed to build or load.
        pytest.exit(f"gaea_ext._C did not load ({gaea_ext._backend._IMPORT_ERROR}): build the kernels with "
                    "`make build`, or set GAEA_EXT_BACKEND=reference to test the references", returncode=1)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every test taking `device` runs on the CPU and, when a GPU exists, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tests of the compiled kernels (against the references, or of torch.ops.gaea_ext directly).
# They skip only under GAEA_EXT_BACKEND=reference: without the kernels and without that
# setting the suite does not run at all (pytest_configure above).
requires_kernels = pytest.mark.skipif(
    ON_REFERENCES, reason="GAEA_EXT_BACKEND=reference: the ops run on the references, this test checks the kernels"
)


def cuda_limit(name):
    """One of the CUDA kernels' per-call limits, from the compiled extension (csrc/cuda_limits.h)."""
    return gaea_ext.cuda_limits()[name]


def assert_same_across_threads(fn, counts=(1, 2)):
    """`fn()` (a tuple of tensors) gives bitwise identical results at each intra-op thread
    count: the kernels' reductions do not depend on how work is split."""
    old = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), (a - b).abs().max()


def eps(dtype):
    """Machine epsilon of a floating dtype."""
    return torch.finfo(dtype).eps


def acc_eps(dtype):
    """Epsilon of the accumulation type (float32 for half types, else the dtype itself)."""
    return eps(torch.float64 if dtype == torch.float64 else torch.float32)


def assert_within(got, want, bound, what=""):
    """|got - want| <= bound elementwise (all compared in float64)."""
    got = got.detach().to("cpu", torch.float64)
    want = want.detach().to("cpu", torch.float64)
    bound = bound.detach().to("cpu", torch.float64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} elements out of tolerance; first at flat "
            f"index {i}: got {got.flatten()[i].item()!r}, want {want.flatten()[i].item()!r}, "
            f"bound {bound.flatten()[i].item()!r}"
        )


@pytest.fixture(autouse=True)
def _one_thread_for_nas_tests(request):
    """The gaea_nas tests (tests/nas/) use tiny tensors: one intra-op thread is faster, and
    far faster on a busy 2-core machine, than PyTorch's default."""
    if "nas" not in request.node.path.parent.parts[-1:]:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# GAEA_CUDA_EMULATION=1: the gaea_ext ops run their CUDA kernels, emulated on the CPU
# (tests/cuda_emulation), for CPU tensors, so the CPU cases of the op tests check the CUDA code.
# With GAEA_EXT_BACKEND=cupy as well, they run the NVRTC backend's Python launchers
# (gaea_ext/cupy_backend.py), which launch the emulated kernels by name.
if os.environ.get("GAEA_CUDA_EMULATION") == "1":
    if gaea_ext._backend.FORCED_CUPY:
        from cuda_emulation.build import route_cpu_kernels_to_cupy_launchers

        _EMULATION = route_cpu_kernels_to_cupy_launchers()
    else:
        from cuda_emulation.build import route_cpu_kernels_to_emulation

        _EMULATION = route_cpu_kernels_to_emulation()


# The project's data (never committed) lies in ../shared/data beside the checkout; CI has it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts):
    """The path of a file under ``../shared/data``; skips the test where it is absent, and fails
    it under CI (``CI=true``), where the data is always beside the checkout."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing; CI runs with ../shared beside the checkout")
        pytest.skip(f"{path} is not present (the project's data lies in ../shared beside the checkout)")
    return path
