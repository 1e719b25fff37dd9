"""pytest-benchmark suite of the EG step (fused gaea_ext vs the released GAEA loop vs
torch.compile of that loop) at DARTS size (2 x [14,8] alphas + 2 x [14] edge weights with
segments [2,3,4,5]) and NB201 size ([6,5]), plus the EG speed target (mark `perf`)."""
import pytest
import torch

from benchmarks.conftest import case_id, require_extension, variant_params
from gaea_ext import bench

SPECS = bench.case_specs("cpu", ops=["exp_grad"])
DARTS_EG = next(s for s in SPECS if s.size == "darts")
TARGET_BUDGET_S = 2.0


@pytest.mark.benchmark(group="exp_grad")
@pytest.mark.parametrize("cpu_threads", [1, 2], indirect=True, ids=lambda t: f"{t}t")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", SPECS, ids=case_id)
def test_exp_grad_cpu(run_benchmark, spec, variant, dtype, cpu_threads):
    run_benchmark(spec, "cpu", variant, dtype, cpu_threads)


@pytest.mark.gpu
@pytest.mark.benchmark(group="exp_grad")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", SPECS, ids=case_id)
def test_exp_grad_cuda(run_benchmark, spec, variant, dtype):
    run_benchmark(spec, "cuda", variant, dtype, torch.get_num_threads())


@pytest.mark.perf
def test_target_cpu_eg_5x_release_loop(cpu_threads):
    """CPU, 1 thread, DARTS size: the fused EG step >= 5x the released per-group loop."""
    require_extension("cpu")
    ratio, t = bench.measure_speedup(DARTS_EG, "cpu", "eager", budget_s=TARGET_BUDGET_S)
    assert ratio >= 5.0, (f"fused EG is {ratio:.2f}x the release loop (fused median "
                          f"{t['fused'].median * 1e6:.1f} us, loop {t['eager'].median * 1e6:.1f} us)")
