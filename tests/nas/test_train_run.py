"""End-to-end ``gaea train`` runs on CPU: run folder contents, determinism, drop path,
SIGTERM / SIGKILL and exact resume, a non-finite loss, errors, the image-folder (ImageNet)
protocols through a stand-in loader, and data parallel (2 gloo ranks). Tiny networks on a
few hundred 16x16 images (32x32 where the DARTS auxiliary head needs them)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaea_nas.cli import main
from gaea_nas.runtime import load_checkpoint
from gaea_nas.train import TrainOptions, canonical_genotype, resolve_config, run_train

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import (  # noqa: E402, F401
    data_cache, make_pattern_folder, pattern_folder_fixture, read_json, read_jsonl, run_cli)

NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"

data16 = pattern_folder_fixture("data16")


def nb201_argv(data, out, *extra, epochs=2):
    """A tiny NB201 cell (C=4, N=1) under the nb201 protocol, batch 16, on CPU."""
    return ["train", NB201_CELL, "--dataset", str(data), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "16", "--channels", "4", "--cells", "1", "--device", "cpu", "--threads", "1",
            "--no-progress", "--checkpoint-minutes", "0", *extra]


def darts_argv(data, out, *extra, epochs=2):
    """DARTS_V2 under the darts protocol at C=4, 3 cells, no auxiliary head (16x16 images)."""
    return ["train", "DARTS_V2", "--dataset", str(data), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "16", "--channels", "4", "--layers", "3", "--device", "cpu", "--threads", "1",
            "--no-progress", "--checkpoint-minutes", "0", "--set", "cutout=4", "--set", "auxiliary_weight=0",
            *extra]


def _same_run(a: Path, b: Path):
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb):
        x.pop("images_per_s"), y.pop("images_per_s")
        assert x == y  # bitwise: JSON floats round-trip exactly
    sa, sb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"]), k


def test_train_writes_the_run_folder(data16, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(nb201_argv(data16, out, "--tensorboard", "--amp", "bf16", "--channels-last")) == 0
    printed = capsys.readouterr().out
    assert "test top1" in printed and "  lr = 0.1" in printed  # the resolved values are printed
    for name in ("config.json", "metrics.jsonl", "result.json", "last.pt", "log.txt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    result = read_json(out / "result.json")
    for key in ("arch", "params", "macs", "test_top1", "best_test_top1", "best_epoch", "epochs", "wall_time_s",
                "device", "seed", "protocol"):
        assert key in result, key
    assert result["arch"] == NB201_CELL and result["protocol"] == "nb201" and "test_top5" not in result
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("train_loss", "train_acc", "test_top1", "lr", "drop_path_prob", "images_per_s"):
            assert m[key] is not None, key
        assert 0 <= m["test_top1"] <= 1
    assert metrics[0]["lr"] == 0.1 and metrics[1]["lr"] == 0.05  # cosine over 2 epochs, stepped after each
    assert result["test_top1"] == metrics[-1]["test_top1"]
    assert result["best_test_top1"] == max(m["test_top1"] for m in metrics)
    cfg = read_json(out / "config.json")
    assert cfg["config"]["nesterov"] is True and cfg["config"]["epochs"] == 2 and cfg["sources"]
    assert cfg["run"]["amp"] == "bf16" and cfg["run"]["channels_last"] is True
    assert main(nb201_argv(data16, out)) == 2  # an existing run is never overwritten
    assert "already holds a run" in capsys.readouterr().err


def test_drop_path_reaches_the_cells(data16, tmp_path):
    assert main(darts_argv(data16, tmp_path / "a", "--set", "drop_path=0.5")) == 0
    assert main(darts_argv(data16, tmp_path / "c", "--set", "drop_path=0")) == 0
    a, c = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "c" / "metrics.jsonl")
    assert [m["drop_path_prob"] for m in a] == [0.0, 0.25]  # p * epoch / epochs
    assert a[0]["train_loss"] == c[0]["train_loss"]  # epoch 1 runs at p = 0 in both
    assert a[1]["train_loss"] != c[1]["train_loss"]


def test_same_seed_same_result_and_exact_resume_after_sigterm_and_sigkill(data16, tmp_path, monkeypatch):
    """Two runs of one seed end bitwise equal; so does a run stopped mid-epoch 2 and resumed:
    SIGTERM in this process (checkpoint at the next step), SIGKILL in a child process (no
    chance to save: the run resumes from the step-5 checkpoint)."""
    extra = ("--checkpoint-every-steps", "5", "--set", "drop_path=0.5")
    ref = tmp_path / "ref"
    assert main(darts_argv(data16, ref, *extra)) == 0
    term = tmp_path / "term"
    monkeypatch.setenv("GAEA_FAULT_INJECT", "SIGTERM@16")
    assert main(darts_argv(data16, term, *extra)) == 128 + 15
    monkeypatch.delenv("GAEA_FAULT_INJECT")
    state = load_checkpoint(term / "last.pt")
    assert (state["epoch"], state["position"]) == (1, 4)
    assert main(["train", "--resume", str(term), "--no-progress"]) == 0
    _same_run(ref, term)
    kill = tmp_path / "kill"
    p = run_cli(darts_argv(data16, kill, *extra), env={"GAEA_FAULT_INJECT": "SIGKILL@19"})
    assert p.returncode == -9, p.stderr[-2000:]
    state = load_checkpoint(kill / "last.pt")
    assert (state["epoch"], state["position"]) == (1, 5) and not (kill / "result.json").exists()
    assert main(["train", "--resume", str(kill), "--no-progress"]) == 0
    _same_run(ref, kill)


def test_non_finite_loss_stops_in_one_line(data16, tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(nb201_argv(data16, out, "--set", "lr=1e12", "--set", "nesterov=false", epochs=3))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "loss is nan" in err or "loss is inf" in err
    assert "last good checkpoint" in err and not (out / "result.json").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["train"], "ARCH is required"),
    (["train", "ResNet50"], "expected a published genotype"),
    (["train", "DARTS_V2", "--protocol", "nb201"], "nb201"),
    (["train", "DARTS_V2", "--cells", "2"], "--cells applies to NAS-Bench-201"),
    (["train", NB201_CELL, "--layers", "2"], "--layers applies to DARTS"),
    (["train", "DARTS_V2", "--set", "warp=9"], "not a TrainConfig field"),
    (["train", "DARTS_V2", "--resume", "x"], "drop ARCH"),
])
def test_bad_arguments_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_resume_of_a_missing_or_corrupt_run_exits_1_in_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "no config.json" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{\"config\": 3}")
    assert main(["train", "--resume", str(run)]) == 1
    assert "config.json" in capsys.readouterr().err
    cfg = resolve_config("nb201", NB201_CELL, epochs=2)
    (run / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "run": TrainOptions().to_dict()}))
    (run / "last.pt").write_bytes(b"garbage")
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "last.pt" in err and err.count("\n") == 1


class _FakeFolderLoaders:
    """Stands in for image_folder_loaders' FolderLoaders: seeded batches per (seed, epoch)."""

    def __init__(self, classes=6, size=32, batch=4, steps=3, test_batches=2, seed=0):
        self.num_classes, self.train_size, self.test_size = classes, batch * steps, batch * test_batches
        self.size, self.batch, self.steps, self.seed, self.epoch = size, batch, steps, seed, 0
        g = torch.Generator().manual_seed(99)
        self.test = [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
                     for _ in range(test_batches)]
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    @property
    def train(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return [(torch.randn(self.batch, 3, self.size, self.size, generator=g),
                 torch.randint(0, self.num_classes, (self.batch,), generator=g)) for _ in range(self.steps)]


def test_imagenet_gaea_protocol_with_a_folder_loader(tmp_path):
    cfg = resolve_config("darts", canonical_genotype(__import__("gaea_nas").spaces.darts.genotypes.GAEA_PC_DARTS_image),
                         "imagenet-gaea", arch_name="GAEA_PC_DARTS_image", dataset="/nonexistent/imagenet", epochs=2,
                         batch_size=4, eval_batch_size=4, channels=4, layers=3, auxiliary_weight=0.0, image_size=32)
    loaders = _FakeFolderLoaders()
    result = run_train(cfg, TrainOptions(device="cpu", progress=False, checkpoint_minutes=0), tmp_path / "in",
                       echo=lambda line: None, folder_loaders=loaders)
    assert loaders.epochs_seen == [0, 1]
    for key in ("test_top1", "test_top5", "ema_test_top1", "ema_test_top5", "best_ema_test_top1"):
        assert 0 <= result[key] <= 1, key
    assert result["test_top5"] >= result["test_top1"] and result["arch_name"] == "GAEA_PC_DARTS_image"
    metrics = read_jsonl(tmp_path / "in" / "metrics.jsonl")
    assert metrics[0]["lr"] == 0.5 * (2 - 0) / 2 * (0 + 1) / 5  # short run: plain linear decay, warm-up
    assert {"test_top5", "ema_test_top1", "ema_test_top5"} <= set(metrics[0])
    state = load_checkpoint(tmp_path / "in" / "last.pt")
    assert int(state["ema"]["n_averaged"]) == 6  # one EMA update per step
    # the EMA weights differ from the live ones (decay 0.999 after 6 steps)
    live = state["model"]["classifier.weight"]
    assert not torch.equal(state["ema"]["module.classifier.weight"], live)


def test_imagenet_protocol_on_an_image_folder_resumes_bitwise(tmp_path, monkeypatch):
    """The imagenet-gaea protocol through the real image-folder loaders (train/ and val/):
    top-5 and EMA figures, and a run stopped mid-epoch resumes exactly (the loader's order and
    augmentation are fixed by the seed and the epoch)."""
    from gaea_nas.data import image_folder
    if not hasattr(image_folder, "image_folder_loaders"):
        pytest.skip("gaea_nas.data.image_folder.image_folder_loaders is not in this tree")
    root = make_pattern_folder(tmp_path / "inet", classes=6, n_train=8, n_test=3, size=32)
    (root / "test").rename(root / "val")

    def argv(out):
        return ["train", "GAEA_PC_DARTS_image", "--protocol", "imagenet-gaea", "--dataset", str(root), "--out",
                str(out), "--epochs", "1", "--batch-size", "8", "--channels", "4", "--layers", "3", "--workers", "0",
                "--device", "cpu", "--threads", "1", "--no-progress", "--set", "auxiliary_weight=0",
                "--set", "image_size=32", "--set", "resize=36"]
    assert main(argv(tmp_path / "ref")) == 0
    result = read_json(tmp_path / "ref" / "result.json")
    assert result["train_images"] == 48 and result["test_images"] == 18
    assert result["test_top5"] >= result["test_top1"] and "ema_test_top1" in result
    monkeypatch.setenv("GAEA_FAULT_INJECT", "SIGTERM@3")
    assert main(argv(tmp_path / "run")) == 128 + 15
    monkeypatch.delenv("GAEA_FAULT_INJECT")
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    _same_run(tmp_path / "ref", tmp_path / "run")
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(v, b["ema"][k]) for k, v in a["ema"].items())


def test_data_parallel_gloo_two_ranks(data16, tmp_path):
    """Two ranks as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), without the launcher process."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "gaea_nas", *nb201_argv(data16, out, epochs=1)]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "GAEA_DATA_CACHE": str(tmp_path / "cache"), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    result = read_json(out / "result.json")
    assert result["world_size"] == 2 and result["test_images"] == 32
    assert "run folder:" in outs[0][0] and outs[1][0] == ""  # one writer
    assert "2 ranks of batch 8" in outs[0][0]  # the global batch of 16 split over the ranks
    assert len(read_jsonl(out / "metrics.jsonl")) == 1
    with open(out / "log.txt") as f:
        assert "12 steps/epoch" in f.read()  # each rank takes half of the 192 images
