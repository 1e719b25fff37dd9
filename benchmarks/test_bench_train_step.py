"""Training-step benchmark (benchmarks/train_step.py): a smoke run at a tiny size (CI), in this
process (a fresh process per variant costs seconds of imports)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import train_step  # noqa: E402


def test_train_step_benchmark_smoke(tmp_path):
    assert train_step.main(["--channels", "8", "--layers", "5", "--batch", "4", "--rounds", "1", "--iters", "1",
                            "--warmup", "0", "--threads", "1", "--variants", "baseline", "fused", "--in-process",
                            "--out-dir", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("train-step-cpu-*.json")
    result = json.loads(json_path.read_text())
    assert result["device"] == "cpu" and result["commit"] and result["date"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"baseline", "fused"}
    for r in rows.values():
        assert r["batch"] == 4 and r["images_per_s"]["median"] > 0 and r["peak_mem_mb"]["min"] >= 0
    assert rows["fused"]["speedup_vs_baseline"] > 0
    table = json_path.with_suffix(".md").read_text()
    assert "| fused | 4 |" in table and result["commit"] in table
    from gaea_nas.spaces.darts import networks
    assert networks.drop_path is not train_step.darts_drop_path_  # the baseline's cells are undone
