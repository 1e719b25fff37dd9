"""pytest-benchmark suite of gaea_ext.weighted_sum (fused vs eager `sum(w * y)` vs torch.compile),
plus the speed targets, as ratios (mark `perf`).

    pytest benchmarks/test_bench_weighted_sum.py --benchmark-json=ws.json
    GAEA_BENCH_NO_COMPILE=1 pytest benchmarks -m "not perf"      # no cold compiles, no targets
"""
import pytest
import torch

from benchmarks.conftest import case_id, require_extension, variant_params
from gaea_ext import bench

CPU_SPECS = bench.case_specs("cpu", ops=["weighted_sum"])
CUDA_SPECS = bench.case_specs("cuda", ops=["weighted_sum"])
DARTS_FWD_BWD = bench.CaseSpec("weighted_sum", "fwd+bwd", bench.EDGE_SHAPE, 8)
TARGET_BUDGET_S = 3.0  # timing per ratio target: the interleaved medians need many rounds


@pytest.mark.benchmark(group="weighted_sum")
@pytest.mark.parametrize("cpu_threads", [1, 2], indirect=True, ids=lambda t: f"{t}t")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", CPU_SPECS, ids=case_id)
def test_weighted_sum_cpu(run_benchmark, spec, variant, dtype, cpu_threads):
    run_benchmark(spec, "cpu", variant, dtype, cpu_threads)


@pytest.mark.gpu
@pytest.mark.benchmark(group="weighted_sum")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", CUDA_SPECS, ids=case_id)
def test_weighted_sum_cuda(run_benchmark, spec, variant, dtype):
    run_benchmark(spec, "cuda", variant, dtype, torch.get_num_threads())


# ---- speed targets, judged as ratios of interleaved medians in this process


@pytest.mark.perf
def test_target_cpu_fwd_bwd_2x_eager(cpu_threads):
    """CPU, 1 thread, 64x16x32x32, K=8: fused fwd+bwd >= 2x eager sum(w * y) + autograd."""
    require_extension("cpu")
    ratio, t = bench.measure_speedup(DARTS_FWD_BWD, "cpu", "eager", budget_s=TARGET_BUDGET_S)
    assert ratio >= 2.0, _explain(ratio, t, "eager")


@pytest.mark.perf
@pytest.mark.compile
def test_target_cpu_fwd_bwd_not_slower_than_compile(cpu_threads):
    """CPU, 1 thread, 64x16x32x32, K=8: fused fwd+bwd not slower than torch.compile of eager."""
    require_extension("cpu")
    ratio, t = bench.measure_speedup(DARTS_FWD_BWD, "cpu", "compile", budget_s=TARGET_BUDGET_S)
    assert ratio >= 1.0, _explain(ratio, t, "compile")


@pytest.mark.perf
@pytest.mark.gpu
@pytest.mark.parametrize("exponent", [22, 24])
def test_target_cuda_fwd_80pct_of_copy(exponent):
    """CUDA, N = 2^22 and 2^24, K=8: fused forward at >= 80% of the measured copy bandwidth."""
    require_extension("cuda")
    spec = bench.CaseSpec("weighted_sum", "fwd", (2**exponent,), 8)
    flush = bench.make_l2_flush("cuda")
    copy = bench.copy_bandwidth("cuda", flush=flush)
    case = bench.build_case(spec, "cuda", variants=["fused"])
    fused = bench.time_interleaved(case.variants, "cuda", flush=flush)["fused"]
    pct = 100 * case.nbytes / fused.median / 1e9 / copy
    assert pct >= 80.0, f"{spec.label}: {pct:.1f}% of copy ({copy:.0f} GB/s), median {fused.median * 1e6:.1f} us"


def _explain(ratio, timings, baseline) -> str:
    return (f"fused is {ratio:.2f}x {baseline} (fused median {timings['fused'].median * 1e3:.3f} ms, "
            f"{baseline} median {timings[baseline].median * 1e3:.3f} ms, {len(timings['fused'].times)} rounds)")
