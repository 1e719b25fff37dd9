"""End-to-end searches through the `gaea` command on CPU: run folder contents, determinism,
ERM vs bilevel data use, every method, stop/kill and exact resume, data parallel (gloo),
plots and the CLI's error paths. Each search is a tiny supernet on a few hundred images."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from gaea_nas.cli import main
from gaea_nas.data import load_dataset, search_streams
from gaea_nas.runtime import load_checkpoint
from conftest import shared_data
from gaea_nas.spaces.nb201 import NB201_EDGES, NB201_OPS, format_arch
from gaea_nas.spaces.nb201.table import default_table_path

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import (  # noqa: E402, F401
    data_cache, make_pattern_folder, pattern_folder_fixture, read_json, read_jsonl, run_cli, search_argv)

HAS_TABLE = default_table_path() is not None

data_dir = pattern_folder_fixture("data_dir")


def _search(data_dir, out, *extra, epochs=2):
    code = main(search_argv(data_dir, out, *extra, epochs=epochs))
    assert code == 0
    return read_json(out / "result.json"), read_jsonl(out / "metrics.jsonl")


def _final_state(run_dir):
    return load_checkpoint(run_dir / "last.pt")


def test_search_writes_the_run_folder(data_dir, tmp_path, capsys):
    result, metrics = _search(data_dir, tmp_path / "run")
    out = capsys.readouterr().out
    assert "cell: |" in out
    for name in ("config.json", "metrics.jsonl", "result.json", "last.pt", "log.txt"):
        assert (tmp_path / "run" / name).is_file(), name
    for key in ("arch", "arch_weights", "nb201", "epochs", "wall_time_s", "device", "seed"):
        assert key in result, key
    assert result["epochs"] == 2 and result["seed"] == 0 and result["wall_time_s"] > 0
    w = torch.tensor(result["arch_weights"]["normal"], dtype=torch.float64)
    assert w.shape == (6, 5)
    # the cell is the argmax op of each edge, written edge by edge (node i <- input j)
    picks = [NB201_OPS[int(k)] for k in w.argmax(1)]
    nodes = [[f"{picks[e]}~{j}" for e, (i, j) in enumerate(NB201_EDGES) if i == node] for node in (1, 2, 3)]
    assert result["arch"] == "+".join("|" + "|".join(n) + "|" for n in nodes)
    assert format_arch(result["arch"]) == result["arch"]
    assert torch.allclose(w.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-5)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("train_loss", "train_acc", "search_loss", "search_acc", "arch", "arch_weights", "entropy", "lr"):
            assert m[key] is not None, key
        assert 0 < m["entropy"] <= math.log(5) + 1e-6
    assert metrics[1]["lr"] < metrics[0]["lr"]  # cosine schedule
    if HAS_TABLE:
        assert result["nb201"]["arch"] == result["arch"]
        assert 10 < result["nb201"]["cifar10_test"] < 95
        assert metrics[-1]["nb201"] == result["nb201"]
        assert "NAS-Bench-201 CIFAR-10 test" in out
    else:
        assert result["nb201"] is None
    cfg = read_json(tmp_path / "run" / "config.json")
    assert cfg["config"]["method"] == "gaea" and cfg["run"]["threads"] == 1 and cfg["notes"]
    state = _final_state(tmp_path / "run")
    assert state["finished"] and state["epoch"] == 2


def test_same_seed_same_result_other_seed_differs(data_dir, tmp_path):
    a, ma = _search(data_dir, tmp_path / "a", epochs=1)
    b, mb = _search(data_dir, tmp_path / "b", epochs=1)
    assert a["arch_weights"] == b["arch_weights"]
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    c, _ = _search(data_dir, tmp_path / "c", "--seed", "1", epochs=1)
    assert c["arch_weights"] != a["arch_weights"]


def test_erm_and_bilevel_draw_from_the_right_images(data_dir):
    ds = load_dataset(data_dir)
    n = len(ds.train_labels)
    w, s = search_streams(ds, "erm", 16, seed=0)
    assert torch.equal(w.indices, torch.arange(n)) and torch.equal(s.indices, torch.arange(n))
    assert not torch.equal(w.epoch_order(0), s.epoch_order(0))  # independently shuffled
    w, s = search_streams(ds, "bilevel", 16, seed=0)
    assert len(w.indices) == len(s.indices) == n // 2
    assert not set(w.indices.tolist()) & set(s.indices.tolist())
    w2, s2 = search_streams(ds, "bilevel", 16, seed=1)
    assert not torch.equal(w.indices, w2.indices)  # the split is seeded


def test_bilevel_search_uses_half_the_images(data_dir, tmp_path):
    result, metrics = _search(data_dir, tmp_path / "bl", "--objective", "bilevel", epochs=1)
    assert result["train_images"] == 96 and result["objective"] == "bilevel"


@pytest.mark.parametrize("space,method,extra", [
    ("nb201", "darts", []),
    ("nb201", "gdas", []),
    ("nb201", "gaea-gdas", ["--set", "arch_warmup_epochs=1", "--set", "tau_warmup_epochs=0"]),
    ("darts", "gaea", ["--cells", "2", "--channels", "4"]),
    ("darts", "gaea-pcdarts", ["--cells", "2", "--channels", "8"]),
    ("darts", "pcdarts", ["--cells", "2", "--channels", "8", "--set", "arch_warmup_epochs=1"]),
])
def test_every_method_runs(data_dir, tmp_path, space, method, extra):
    result, metrics = _search(data_dir, tmp_path / "run", "--space", space, "--method", method,
                              "--objective", "erm", *extra, epochs=2)
    assert result["method"] == method and len(metrics) == 2
    if space == "darts":
        assert result["arch"].startswith("Genotype(") and set(result["arch_weights"]) >= {"normal", "reduce"}
        assert result["nb201"] is None
    if "gdas" in method:
        assert metrics[0]["tau"] > metrics[1]["tau"] >= 0.1
    if "arch_warmup_epochs=1" in extra:
        assert metrics[0]["arch_updated"] is False and metrics[0]["search_loss"] is None
        assert metrics[1]["arch_updated"] is True
    if method == "gaea-pcdarts":
        assert "edges_normal" in result["arch_weights"]


def test_bf16_autocast_and_channels_last_run(data_dir, tmp_path):
    result, metrics = _search(data_dir, tmp_path / "amp", "--amp", "bf16", "--channels-last", epochs=1)
    assert all(math.isfinite(m["train_loss"]) for m in metrics)
    w = torch.tensor(result["arch_weights"]["normal"])
    assert torch.allclose(w.sum(1), torch.ones(6), atol=1e-5)


def test_compiled_supernet_runs(data_dir, tmp_path, monkeypatch):
    # aot_eager: dynamo capture with the custom ops inside, without inductor's code generation
    monkeypatch.setenv("GAEA_COMPILE_BACKEND", "aot_eager")
    result, metrics = _search(data_dir, tmp_path / "c", "--compile", epochs=1)
    plain, plain_metrics = _search(data_dir, tmp_path / "p", epochs=1)
    assert read_json(tmp_path / "c" / "config.json")["run"]["compile"] == "default"
    assert abs(metrics[0]["train_loss"] - plain_metrics[0]["train_loss"]) < 1e-3


def _same_run(a: Path, b: Path):
    ra, rb = read_json(a / "result.json"), read_json(b / "result.json")
    assert ra["arch"] == rb["arch"]
    assert ra["arch_weights"] == rb["arch_weights"]  # bitwise: JSON floats round-trip exactly
    sa, sb = _final_state(a), _final_state(b)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    for x, y in zip(ma, mb):
        for key in ("train_loss", "search_loss", "train_acc", "search_acc", "arch", "arch_weights", "entropy"):
            assert x[key] == y[key], key
    assert len(ma) == len(mb)


@pytest.mark.parametrize("signal_name,expected_code", [("SIGKILL", -9), ("SIGTERM", 128 + 15), ("SIGINT", 128 + 2)])
def test_interrupted_run_resumes_bitwise(data_dir, tmp_path, signal_name, expected_code):
    """Stopped mid-epoch 2 (SIGKILL: no chance to save; SIGTERM/SIGINT: checkpoint at the next
    step) and resumed, the run ends bitwise where the uninterrupted one does."""
    env_cache = {"GAEA_DATA_CACHE": str(tmp_path / "cache")}
    ref = tmp_path / "ref"
    p = run_cli(search_argv(data_dir, ref, "--checkpoint-every-steps", "5", epochs=3), env=env_cache)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    p = run_cli(search_argv(data_dir, run, "--checkpoint-every-steps", "5", epochs=3),
                env={**env_cache, "GAEA_FAULT_INJECT": f"{signal_name}@19"})
    assert p.returncode == expected_code, p.stderr
    assert not (run / "result.json").exists()
    state = _final_state(run)
    assert state["epoch"] == 1 and 0 < state["position"] < 12  # mid-epoch 2 (12 steps per epoch)
    if signal_name != "SIGKILL":
        assert state["position"] == 19 - 12 and "resume with: gaea search --resume" in p.stderr
    p = run_cli(["search", "--resume", str(run), "--no-progress"], env=env_cache)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stdout
    _same_run(ref, run)


def test_data_parallel_gloo_two_ranks(data_dir, tmp_path):
    out = tmp_path / "ddp"
    argv = search_argv(data_dir, out, "--batch-size", "8", epochs=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gaea_nas", *argv]
    import os
    import subprocess
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "GAEA_DATA_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr[-3000:]
    result = read_json(out / "result.json")
    assert result["world_size"] == 2 and result["arch_identical_across_ranks"] is True
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 2
    assert p.stdout.count("cell: |") == 1  # only rank 0 reports
    # each rank drew its half of the 192 images: 6 steps per epoch of 8 images per rank
    assert metrics[0]["arch_weights"] != metrics[1]["arch_weights"]


def test_plot_writes_pngs(data_dir, tmp_path):
    _search(data_dir, tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    names = ["arch_weights.png", "entropy.png", "accuracy.png", "cell.png"]
    for name in names:
        path = tmp_path / "run" / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    _search(data_dir, tmp_path / "darts", "--space", "darts", "--cells", "2", epochs=1)
    assert main(["plot", str(tmp_path / "darts"), "--out", str(tmp_path / "figs")]) == 0
    assert all((tmp_path / "figs" / n).is_file() for n in names)


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 1
    assert "metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [
    (["search", "--epochs", "0"], "positive integer"),
    (["search", "--space", "nb201", "--method", "pcdarts"], "not available in space 'nb201'"),
    (["search", "--method", "nope"], "invalid choice"),
    (["search", "--set", "arch_lr=-1"], "arch_lr"),
    (["search", "--set", "bogus=1"], "unknown field"),
    (["search", "--device", "tpu"], "device"),
    (["search", "--space", "darts", "--method", "gaea-pcdarts", "--device", "cpu", "--channels-last"], "partial channels"),
    (["search", "--resume", "RUN", "--epochs", "3"], "drop --epochs"),
    (["lookup", "|not_an_op~0|+|x~0|y~1|+|a~0|b~1|c~2|"], "ARCH"),
    (["bogus-command"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_usage(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_existing_run_folder_is_not_overwritten(data_dir, tmp_path, capsys):
    _search(data_dir, tmp_path / "run", epochs=1)
    assert main(search_argv(data_dir, tmp_path / "run", epochs=1)) == 2
    assert "--resume" in capsys.readouterr().err


def test_missing_or_corrupt_inputs_exit_1_in_one_line(data_dir, tmp_path):
    cases = [search_argv(tmp_path / "no-such-folder", tmp_path / "r1")]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    cases.append(search_argv(bad, tmp_path / "r2"))
    table = tmp_path / "table.csv.gz"
    table.write_bytes(b"\x1f\x8b garbage")
    cases.append(search_argv(data_dir, tmp_path / "r3", "--table", str(table)))
    cases.append(search_argv(data_dir, tmp_path / "r4", "--table", str(tmp_path / "missing.csv.gz")))
    cases.append(["search", "--resume", str(tmp_path)])  # not a run folder
    cases.append(["lookup", "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
                  "--table", str(tmp_path / "missing.csv.gz")])
    for argv in cases:
        p = run_cli(argv, env={"GAEA_DATA_CACHE": str(tmp_path / "cache")})
        assert p.returncode == 1, (argv, p.stderr)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("gaea: error:"), (argv, p.stderr)


def test_corrupt_checkpoint_exits_1(data_dir, tmp_path, capsys):
    _search(data_dir, tmp_path / "run", epochs=1)
    (tmp_path / "run" / "last.pt").write_bytes(b"garbage")
    assert main(["search", "--resume", str(tmp_path / "run")]) == 1
    assert "last.pt" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "nan"
    # an absurd weight LR diverges within the second epoch
    code = main(search_argv(data_dir, out, "--set", "lr=1e9", "--set", "min_lr=1e9", "--set", "grad_clip=1e12",
                            epochs=4))
    err = capsys.readouterr().err
    assert code == 1
    assert "loss is nan" in err or "loss is inf" in err
    assert "last good checkpoint" in err
    assert not (out / "result.json").exists()


def test_lookup_prints_the_table_row(capsys):
    shared_data("nb201", "nb201_accuracies.csv.gz")
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert main(["lookup", arch, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["arch"] == arch and 93 < row["cifar10_test"] < 95
    assert main(["lookup", arch]) == 0
    assert "CIFAR-10" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__ and "gaea_ext_backend" in info


def test_search_on_a_subset_of_the_shared_cifar10(tmp_path):
    SHARED_CIFAR = shared_data("cifar10", "cifar10-jpeg.tar.gz")
    out = tmp_path / "c10"
    p = run_cli(["search", "--dataset", str(SHARED_CIFAR), "--out", str(out), "--train-images", "256",
                 "--epochs", "1", "--batch-size", "32", "--channels", "4", "--cells", "1", "--device", "cpu",
                 "--threads", "1", "--no-progress"], timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    result = read_json(out / "result.json")
    assert result["train_images"] == 256 and result["dataset"].startswith("cifar10")
    shutil.rmtree(out)
