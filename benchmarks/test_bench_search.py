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


def test_search_step_repeat_smoke(tmp_path):
    assert search_step.main(["--repeat", "1", "--spaces", "nb201", "--compile-spaces", "--threads", "1",
                             "--iters", "1", "--warmup", "0", "--sizes", "nb201=4,1,2",
                             "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("e2e-repeat-cpu-*.json")
    report = json.loads(path.read_text())
    assert len(report["provenance"]["commit"]) == 40 and isinstance(report["provenance"]["dirty"], bool)
    assert report["config"]["sizes"]["nb201"] == [4, 1, 2]
    assert {r["measure"] for r in report["summary"]} == {
        "NB201 supernet fwd+bwd img/s", "NB201 GAEA search iteration img/s", "NB201 activation memory MB",
        "NB201 ATen calls per iteration"}  # kernel launches are counted on CUDA only
    calls = {r["variant"]: r["aten_calls"] for r in report["runs"]}
    assert 0 < calls["fused"] < calls["baseline"]
    assert {(r["space"], r["variant"]) for r in report["runs"]} == {("nb201", "baseline"), ("nb201", "fused")}
    assert "| NB201 activation memory MB | 1 |" in path.with_suffix(".md").read_text()


def test_repeat_summary_medians_ratios_and_targets():
    import search_repeat

    runs = [{"repeat": rep, "space": "nb201", "threads": 1, "variant": v, "images_per_s": ips * scale,
             "fwd_bwd_images_per_s": fb, "activation_mb": mb}
            for rep, scale in enumerate([1, 2, 1])
            for v, ips, fb, mb in [("baseline", 1.0, 2.0, 10.0), ("fused", 3.0, 3.0, 4.0), ("baseline-compile", 2.0, 2.0, 6.0)]]
    rows = {r["measure"]: r for r in search_repeat.summarise(runs, [1], ["nb201"])}
    it = rows["NB201 GAEA search iteration img/s"]
    assert it["variants"]["fused"] == {"median": 3.0, "min": 3.0, "max": 6.0, "n": 3}
    assert it["ratio"]["median_of_medians"] == 3.0 and it["met"] and it["beats_compile"]
    assert not rows["NB201 supernet fwd+bwd img/s"]["met"]  # 1.5x < 2.0x
    assert rows["NB201 activation memory MB"]["met"]  # 0.4x <= 0.5x
    with pytest.raises(ValueError, match="SPACE=CHANNELS,CELLS,BATCH"):
        search_repeat.parse_sizes(["nb201=4,1"])
