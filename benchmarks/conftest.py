"""Shared fixtures of the benchmark suites. Cases, inputs and timing come from gaea_ext.bench.

Marks (registered here):
  perf     the speed targets (ratios), measured in-process and asserted (`-m "not perf"` skips)
  gpu      CUDA-only cases, skipped without a GPU
  compile  torch.compile variants, skipped when GAEA_BENCH_NO_COMPILE=1 (cold CPU compile is slow)
Option: --gaea-dtype float32|float16|bfloat16|float64 (inputs of the throughput benchmarks).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from gaea_ext import bench

NO_COMPILE = os.environ.get("GAEA_BENCH_NO_COMPILE", "") not in ("", "0")
MAX_ROUNDS = 1000

MARKERS = {
    "perf": "asserts a speed ratio target (noisy machines: deselect with -m 'not perf')",
    "gpu": "needs a CUDA device (skipped without one)",
    "compile": "uses torch.compile (skipped when GAEA_BENCH_NO_COMPILE=1)",
}

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # e.g. a bare GPU machine: the ratio tests still run

    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed")


def pytest_addoption(parser):
    parser.addoption("--gaea-dtype", default="float32", choices=list(bench.DTYPES),
                     help="input dtype of the gaea_ext throughput benchmarks")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    """Skip gpu cases without CUDA and compile cases when GAEA_BENCH_NO_COMPILE is set."""
    no_gpu = pytest.mark.skip(reason="no CUDA device")
    no_compile = pytest.mark.skip(reason="GAEA_BENCH_NO_COMPILE is set")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "compile" in item.keywords and NO_COMPILE:
            item.add_marker(no_compile)


def case_id(spec: bench.CaseSpec) -> str:
    """Test id usable in -k, e.g. ``weighted_sum-fwd+bwd-64x16x32x32-K8``, ``exp_grad-step-darts``
    (``K`` is the number of inputs, or of incoming edges for ``mixed_node``)."""
    if spec.op == "exp_grad":
        return f"{spec.op}-{spec.mode}-{spec.size}"
    return f"{spec.op}-{spec.mode}-{spec.shape_str}-K{spec.k}"


def variant_params() -> list:
    """fused / eager / compile, the last one carrying the compile mark."""
    return [pytest.param(v, marks=pytest.mark.compile) if v == "compile" else v
            for v in bench.VARIANTS]


@pytest.fixture
def dtype(request) -> torch.dtype:
    return bench.DTYPES[request.config.getoption("--gaea-dtype")]


@pytest.fixture
def cpu_threads(request):
    """Run the test at `request.param` CPU threads (indirect parametrisation; default 1)."""
    threads = getattr(request, "param", 1)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch._dynamo.reset()  # inductor CPU kernels specialise on the thread count
    yield threads
    torch.set_num_threads(old)


def require_extension(device: str) -> None:
    """Skip unless the compiled kernels serve `device` (ratios of the fallback mean nothing)."""
    if bench.gaea_ext.backend(device) == "reference":
        pytest.skip(f"gaea_ext kernels for {device} are not built (backend is the reference)")


@pytest.fixture
def run_benchmark(benchmark, request):
    """run_benchmark(spec, device, variant, dtype, threads): one variant of one case under
    pytest-benchmark (synchronised, L2 flushed in setup on CUDA), grouped by case, with the
    byte model and GB/s in extra_info."""

    def run(spec: bench.CaseSpec, device: str, variant: str, dtype: torch.dtype, threads: int):
        device = torch.device(device)
        case = bench.build_case(spec, device, dtype, variants=[variant])
        if variant not in case.variants:
            pytest.skip(f"{variant} could not be built here (see the warning above)")
        fn = case.variants[variant]
        flush = bench.make_l2_flush(device)

        def setup():
            if flush is not None:
                flush()
            bench.sync(device)

        def target():
            fn()
            bench.sync(device)

        estimate = bench.first_call_seconds(fn, device)  # also warms caches and allocator
        max_time = float(request.config.getoption("benchmark_max_time", 1.0))
        min_rounds = int(request.config.getoption("benchmark_min_rounds", 5))
        rounds = max(min_rounds, min(MAX_ROUNDS, math.ceil(max_time / max(estimate, 1e-9))))
        benchmark.group = f"{spec.label} {bench.DTYPE_NAMES[dtype]} {device.type} {threads}t"
        benchmark.extra_info.update({
            "case": spec.label, "variant": variant, "device": device.type,
            "dtype": bench.DTYPE_NAMES[dtype], "threads": threads, "K": spec.k, "N": spec.numel,
            "bytes": case.nbytes, "compile_s": case.compile_s,
        })
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=2, iterations=1)
        stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
        if stats is not None:
            benchmark.extra_info["gbps"] = case.nbytes / stats.median / 1e9

    return run
