"""benchmarks/nb201_rank_correlation.py: its cell choice, its Spearman correlation, and its
driving of ``gaea train`` (here a stand-in command that writes the run files)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nb201_rank_correlation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("nb201_rank_correlation", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_cells_spans_the_connected_range(bench):
    acc = [10.0, 50.0, 60.0, 70.0, 80.0, 90.0, 93.0, 94.0, 50.0]
    connected = [False] + [True] * 8
    # targets 50, 72, 94: the tie at 50 goes to the lower index, the disconnected 10% cell is never chosen
    assert bench.choose_cells(acc, 3, connected) == [1, 3, 7]
    # targets 50, 61, 72, 83, 94: each cell once
    assert bench.choose_cells(acc, 5, connected) == [1, 2, 3, 4, 7]
    # more targets than distinct nearby cells: the next closest free cell
    assert bench.choose_cells([1.0, 2.0, 3.0, 100.0], 4, [True] * 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least 2"):
        bench.choose_cells(acc, 1, connected)
    with pytest.raises(ValueError, match="only 2 connected cells"):
        bench.choose_cells(acc, 3, [True, True] + [False] * 7)


def test_choose_cells_on_the_table(bench):
    from gaea_nas.spaces.nb201 import NB201Table, is_valid_arch

    table = NB201Table(shared_data("nb201", "nb201_accuracies.csv.gz"))
    acc = table.accuracies("cifar10", "ori-test")
    connected = [is_valid_arch(table.arch(i)) for i in range(len(table))]
    chosen = bench.choose_cells(acc, 7, connected)
    assert chosen == bench.choose_cells(acc, 7, connected) and len(set(chosen)) == 7
    assert all(connected[i] for i in chosen)
    picked = [acc[i] for i in chosen]
    pool = [a for a, c in zip(acc, connected) if c]
    assert picked[0] == min(pool) and picked[-1] == max(pool)
    assert picked == sorted(picked)
    gaps = np.diff(picked)
    assert gaps.max() < 2 * (max(pool) - min(pool)) / 6  # spread over the range, not bunched


def test_rank_and_spearman(bench):
    assert bench.rank([3.0, 1.0, 2.0, 2.0]).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 sum(d^2) / (n (n^2 - 1)); d = (0, -2, 1, 1, 0) -> 1 - 36 / 120
    assert bench.spearman([1, 2, 3, 4, 5], [1, 4, 2, 3, 5]) == pytest.approx(0.7)
    assert bench.spearman([1, 1, 1], [1, 2, 3]) is None
    x, y = [0.3, 0.1, 0.1, 0.9, 0.5, 0.7], [2.0, 1.0, 3.0, 3.0, 5.0, 4.0]
    try:
        from scipy.stats import spearmanr
    except ImportError:
        rx, ry = bench.rank(x), bench.rank(y)
        want = np.corrcoef(rx, ry)[0, 1]
    else:
        want = spearmanr(x, y).statistic
    assert bench.spearman(x, y) == pytest.approx(want)


FAKE_GAEA = '''
import json, os, sys
from pathlib import Path
a = sys.argv[1:]
assert a[0] == "train" and a[a.index("--protocol") + 1] == "nb201"
arch, out = a[1], Path(a[a.index("--out") + 1])
calls = Path(os.environ["FAKE_CALLS"])
calls.write_text(calls.read_text() + arch + "\\n" if calls.exists() else arch + "\\n")
out.mkdir(parents=True)
acc = json.loads(os.environ["FAKE_ACC"])[arch]
get = lambda f: int(a[a.index(f) + 1])
(out / "result.json").write_text(json.dumps({"arch": arch, "protocol": "nb201", "test_top1": acc,
    "best_test_top1": acc, "epochs": get("--epochs"), "seed": get("--seed"),
    "train_images": get("--train-images"), "test_images": get("--test-images"), "wall_time_s": 1.0}))
(out / "config.json").write_text(json.dumps({"config": {"channels": get("--channels"), "cells": get("--cells"),
    "batch_size": get("--batch-size")}}))
'''


def test_driver_trains_each_cell_once_and_writes_results(bench, tmp_path, monkeypatch, capsys):
    from gaea_nas.spaces.nb201 import NB201Table, is_valid_arch

    path = shared_data("nb201", "nb201_accuracies.csv.gz")
    table = NB201Table(path)
    acc = table.accuracies("cifar10", "ori-test")
    chosen = bench.choose_cells(acc, 3, [is_valid_arch(table.arch(i)) for i in range(len(table))])
    reached = dict(zip((table.arch(i) for i in chosen), (0.30, 0.20, 0.40)))  # ranks 2, 1, 3 against 1, 2, 3
    fake = tmp_path / "fake_gaea.py"
    fake.write_text(FAKE_GAEA)
    monkeypatch.setenv("FAKE_ACC", json.dumps(reached))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.txt"))
    argv = ["--table", str(path), "--num-archs", "3", "--epochs", "1", "--train-images", "64", "--test-images", "32",
            "--gaea", f"{sys.executable} {fake}", "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results")]
    assert bench.main(argv) == 0
    (json_path,) = (tmp_path / "results").glob("nb201-rank-correlation-cpu-*.json")
    report = json.loads(json_path.read_text())
    assert report["spearman"] == pytest.approx(0.5)
    assert [c["index"] for c in report["cells"]] == chosen
    assert [c["test_top1"] for c in report["cells"]] == pytest.approx([30.0, 20.0, 40.0])
    assert report["budget"]["epochs"] == 1 and report["commit"] and report["date"] and report["device"]
    assert "**0.500**" in json_path.with_suffix(".md").read_text()
    assert len((tmp_path / "calls.txt").read_text().split()) == 3
    assert bench.main(argv) == 0  # finished runs of the same budget are reused
    assert len((tmp_path / "calls.txt").read_text().split()) == 3
    with pytest.raises(SystemExit, match="a run of another budget"):
        bench.main([*argv[:-4], "--epochs", "2", "--runs-dir", str(tmp_path / "runs"),
                    "--results-dir", str(tmp_path / "results")])
    capsys.readouterr()
    assert bench.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" train '|") == 3 and "--protocol nb201" in out
