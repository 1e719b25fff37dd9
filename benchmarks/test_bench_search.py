"""End-to-end search-iteration benchmark (benchmarks/search_step.py): a smoke run of every
variant at a tiny size (CI), and the CPU speed targets at the real size (mark `perf`)."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import search_step  # noqa: E402


def test_search_step_benchmark_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    assert search_step.main(["--threads", "1", "--batch", "4", "--channels", "4", "--cells", "1", "--iters", "1",
                             "--warmup", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in rows} == set(search_step.VARIANTS)
    for r in rows:
        assert r["images_per_s"] > 0 and r["peak_mem_mb"] >= 0 and r["activation_mb"] > 0
    by = {r["variant"]: r for r in rows}
    assert by["fused"]["activation_mb"] < by["baseline"]["activation_mb"]  # pools are not kept


def test_search_step_benchmark_darts_spaces_smoke(tmp_path):
    out = tmp_path / "pc.json"
    assert search_step.main(["--space", "pcdarts", "--threads", "1", "--batch", "2", "--channels", "8",
                             "--cells", "3", "--iters", "1", "--warmup", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"baseline", "fused", "plain"}


@pytest.mark.perf
def test_target_cpu_nb201_iteration_1p8x_baseline_and_0p7x_memory(tmp_path):
    """CPU at 1 thread: GAEA NB201 search iteration >= 1.8x the baseline's images/s
    with <= 0.7x its memory (C=16, N=5, batch 64)."""
    out = tmp_path / "e2e.json"
    search_step.main(["--threads", "1", "--variants", "baseline", "fused", "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["fused"]["speedup_vs_baseline"] >= 1.8
    assert rows["fused"]["activation_vs_baseline"] <= 0.7


@pytest.mark.gpu
@pytest.mark.perf
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_target_gpu_nb201_iteration_2x_baseline(tmp_path):
    out = tmp_path / "e2e.json"
    search_step.main(["--device", "cuda", "--variants", "baseline", "fused", "--iters", "10", "--warmup", "3",
                      "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["fused"]["speedup_vs_baseline"] >= 2.0
