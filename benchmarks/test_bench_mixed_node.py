"""pytest-benchmark suite of gaea_ext.mixed_node on an NB201 node (3 edges: skip and the 3x3
avg pool computed in-kernel, two conv outputs each) against the eager way (every op
materialised, `none` as `x * 0`, Python `sum(w * y)`) and torch.compile of it, plus the CPU
speed target of the fused node (mark `perf`).

    pytest benchmarks/test_bench_mixed_node.py --benchmark-json=mn.json
"""
import pytest
import torch

from benchmarks.conftest import case_id, require_extension, variant_params
from gaea_ext import bench

CPU_SPECS = bench.case_specs("cpu", ops=["mixed_node"])
CUDA_SPECS = bench.case_specs("cuda", ops=["mixed_node"])
NODE_FWD_BWD = bench.CaseSpec("mixed_node", "fwd+bwd", bench.EDGE_SHAPE, 3)


@pytest.mark.benchmark(group="mixed_node")
@pytest.mark.parametrize("cpu_threads", [1, 2], indirect=True, ids=lambda t: f"{t}t")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", CPU_SPECS, ids=case_id)
def test_mixed_node_cpu(run_benchmark, spec, variant, dtype, cpu_threads):
    run_benchmark(spec, "cpu", variant, dtype, cpu_threads)


@pytest.mark.gpu
@pytest.mark.benchmark(group="mixed_node")
@pytest.mark.parametrize("variant", variant_params())
@pytest.mark.parametrize("spec", CUDA_SPECS, ids=case_id)
def test_mixed_node_cuda(run_benchmark, spec, variant, dtype):
    run_benchmark(spec, "cuda", variant, dtype, torch.get_num_threads())


@pytest.mark.perf
def test_target_cpu_node_fwd_bwd_2x_eager(cpu_threads):
    """CPU, 1 thread, NB201 node at batch 64: fused fwd+bwd >= 2x the eager node."""
    require_extension("cpu")
    ratio, t = bench.measure_speedup(NODE_FWD_BWD, "cpu", "eager", budget_s=3.0)
    assert ratio >= 2.0, f"fused is {ratio:.2f}x eager"
