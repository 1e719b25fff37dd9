"""``gaea report``: grouping, mean ± sample std of final and best accuracy, published figures,
search summaries, incomplete runs and one-line errors for malformed files."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from conftest import shared_data
from gaea_nas.cli import main
from gaea_nas.published import PUBLISHED_RESULTS, network_name, published_result
from gaea_nas.report import ReportError, build_report, format_markdown, mean_std
from gaea_nas.spaces.darts.genotypes import PC_DARTS_cifar

NB201_CELL = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


def _train_run(root: Path, name: str, *, arch="DARTS_V2 literal", arch_name="DARTS_V2", protocol="darts",
               dataset="cifar10", epochs=600, top1=0.97, best=0.972, seed=0, top5=None, channels=36) -> Path:
    d = root / name
    d.mkdir(parents=True)
    result = {"arch": arch, "arch_name": arch_name, "space": "nb201" if arch.startswith("|") else "darts",
              "protocol": protocol, "params": 3_349_342, "macs": 528.0, "test_top1": top1, "best_test_top1": best,
              "best_epoch": epochs - 3, "epochs": epochs, "wall_time_s": 100.0, "device": "cpu", "seed": seed,
              "dataset": dataset}
    if top5 is not None:
        result["test_top5"] = top5
    (d / "result.json").write_text(json.dumps(result))
    (d / "config.json").write_text(json.dumps({"config": {"dataset": dataset, "seed": seed, "epochs": epochs,
                                                          "channels": channels, "cutout": 16}}))
    return d


def _search_run(root: Path, name: str, arch: str, c10: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    nb = {"index": 0, "arch": arch, "cifar10_valid": c10 - 3, "cifar10_test": c10, "cifar100_valid": 60.0,
          "cifar100_test": 61.0, "imagenet16_valid": 30.0, "imagenet16_test": 31.0}
    (d / "result.json").write_text(json.dumps({"arch": arch, "ops": [], "nb201": nb, "epochs": 25, "seed": 0,
                                               "space": "nb201", "method": "gaea", "objective": "erm",
                                               "dataset": "cifar10"}))
    return d


def test_mean_std_is_the_sample_std():
    s = mean_std([1.0, 2.0, 4.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert mean_std([5.0]) == {"mean": 5.0, "std": None, "n": 1}
    assert mean_std([])["n"] == 0


def test_train_groups_final_and_best_separately(tmp_path):
    finals, bests = [0.9700, 0.9720, 0.9690], [0.9730, 0.9725, 0.9712]
    runs = [_train_run(tmp_path, f"v2-{s}", seed=s, top1=f, best=b) for s, (f, b) in enumerate(zip(finals, bests))]
    runs.append(_train_run(tmp_path, "v2-short", epochs=10, top1=0.5, best=0.6))  # other epochs: own group
    pc = _train_run(tmp_path, "pc", arch=repr(PC_DARTS_cifar), arch_name=None, top1=0.971, best=0.9745)
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    report = build_report([*runs, pc, tmp_path / "running"])
    groups = {(g["network"], g["epochs"]): g for g in report["train"]}
    g = groups[("DARTS_V2", 600)]
    assert g["final_top1"]["n"] == 3
    assert g["final_top1"]["mean"] == pytest.approx(100 * statistics.mean(finals))
    assert g["final_top1"]["std"] == pytest.approx(100 * statistics.stdev(finals))
    assert g["best_top1"]["mean"] == pytest.approx(100 * statistics.mean(bests))
    assert g["best_top1"]["std"] == pytest.approx(100 * statistics.stdev(bests))
    assert g["published"]["top1"] == pytest.approx(97.24) and g["published"]["params_m"] == 3.3
    assert groups[("DARTS_V2", 10)]["final_top1"] == {"mean": 50.0, "std": None, "n": 1}
    assert groups[("PC_DARTS_cifar", 600)]["published"]["top1"] == pytest.approx(97.43)
    assert report["incomplete"] == [{"run": str(tmp_path / "running"),
                                     "note": "no result.json (running, stopped or failed; 2 epochs recorded)"}]
    md = format_markdown(report)
    assert ("| DARTS_V2 | darts | cifar10 | 600 | — | 97.03 ± 0.15 (n=3) | 97.22 ± 0.09 (n=3) | — | 3.349 | "
            "97.24 ± 0.09 (final epoch, mean of 10 runs) | 3.3 |") in md
    assert "## Incomplete runs" in md and "running" in md


def test_runs_with_other_settings_are_grouped_apart(tmp_path):
    runs = [_train_run(tmp_path, "a0", seed=0), _train_run(tmp_path, "a1", seed=1, top1=0.96),
            _train_run(tmp_path, "narrow", channels=16, top1=0.95)]
    groups = build_report(runs)["train"]
    assert sorted((g["variant"], len(g["runs"])) for g in groups) == [("channels=16", 1), ("channels=36", 2)]
    assert "| DARTS_V2 | darts | cifar10 | 600 | channels=16 | 95.00 (n=1)" in format_markdown(build_report(runs))


def test_dataset_family():
    from gaea_nas.published import benchmark_of, dataset_family

    assert dataset_family("cifar10") == "cifar10" and dataset_family("/d/cifar10-jpeg.tar.gz") == "cifar10"
    assert dataset_family("CIFAR-100") == "cifar100" and dataset_family("imagenet16-120") == "imagenet16-120"
    assert dataset_family("/data/imagenet") is None
    assert benchmark_of("darts", "cifar10-jpeg.tar.gz") == "cifar10" and benchmark_of("darts", "cifar100") is None
    assert benchmark_of("imagenet-gaea", "/data/imagenet") == "imagenet"


def test_imagenet_runs_show_top5_and_dataset_from_config(tmp_path):
    d = _train_run(tmp_path, "in", arch_name="GAEA_PC_DARTS_image", protocol="imagenet-gaea",
                   dataset="/data/imagenet", epochs=250, top1=0.76, best=0.761, top5=0.927)
    g = build_report([d])["train"][0]
    assert g["final_top5"]["mean"] == pytest.approx(92.7)
    assert g["published"]["top1"] == pytest.approx(76.0) and g["published"]["top5"] == pytest.approx(92.7)
    # a network without a published figure on this benchmark: none
    other = _train_run(tmp_path, "c100", dataset="cifar100")
    assert build_report([other])["train"][0]["published"] is None
    assert "| — | — | — |" in format_markdown(build_report([other]))


def test_nb201_train_runs_compare_with_the_table(tmp_path):
    table = shared_data("nb201", "nb201_accuracies.csv.gz")
    d = _train_run(tmp_path, "nb", arch=NB201_CELL, arch_name=None, protocol="nb201", epochs=200,
                   dataset="cifar10-jpeg.tar.gz")
    g = build_report([d], str(table))["train"][0]
    assert g["published"]["top1"] == pytest.approx(85.8633333, abs=1e-4)
    assert g["published"]["source"] == "NAS-Bench-201 table"
    missing = build_report([d], str(tmp_path / "none.csv.gz"))
    assert missing["train"][0]["published"] is None and "table not loaded" in missing["notes"][0]


def test_search_runs_count_distinct_cells(tmp_path):
    runs = [_search_run(tmp_path, "s0", NB201_CELL, 94.0), _search_run(tmp_path, "s1", NB201_CELL, 94.0),
            _search_run(tmp_path, "s2", NB201_CELL.replace("avg_pool", "nor_conv_3x3"), 93.0)]
    g = build_report(runs)["search"][0]
    assert g["distinct_cells"] == 2 and len(g["runs"]) == 3
    assert g["nb201"]["cifar10_test"]["mean"] == pytest.approx(93 + 2 / 3)
    assert g["nb201"]["cifar10_test"]["std"] == pytest.approx(statistics.stdev([94.0, 94.0, 93.0]))


def test_published_table_covers_the_networks():
    for key in [("DARTS_V1", "cifar10"), ("DARTS_V2", "cifar10"), ("PC_DARTS_cifar", "cifar10"),
                ("GAEA_PC_DARTS", "cifar10"), ("DARTS_V2", "imagenet"), ("PC_DARTS_image", "imagenet"),
                ("GAEA_PC_DARTS_image", "imagenet")]:
        assert PUBLISHED_RESULTS[key].source
    assert PUBLISHED_RESULTS[("DARTS_V1", "cifar10")].top1 is None
    assert network_name(repr(PC_DARTS_cifar)) == "PC_DARTS_cifar"
    assert network_name("not a genotype") is None
    assert published_result("DARTS", "cifar10").top1_error == 2.76


def test_cli_report_markdown_json_and_errors(tmp_path, capsys):
    d = _train_run(tmp_path, "a")
    assert main(["report", str(d)]) == 0
    assert "| DARTS_V2 | darts |" in capsys.readouterr().out
    assert main(["report", "--json", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["train"][0]["network"] == "DARTS_V2"
    bad = _train_run(tmp_path, "bad")
    (bad / "result.json").write_text('{"arch": ')
    assert main(["report", str(d), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gaea: error: {bad / 'result.json'}: not valid JSON") and err.count("\n") == 1
    (bad / "result.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"result.json: expected a JSON object, got list"):
        build_report([bad])
    (bad / "result.json").write_text('{"x": 1}')
    with pytest.raises(ReportError, match=r"neither a training result"):
        build_report([bad])
    with pytest.raises(ReportError, match=r"nowhere: no such run folder"):
        build_report([tmp_path / "nowhere"])
