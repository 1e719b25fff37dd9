"""What `gaea search` refuses, and what a failed search leaves behind: options out of range,
checkpoints of the wrong structure or content, a dataset changed under a resumed run, a full
disk, and the one-line errors and exit codes of each. In-process, on a 64-image dataset."""
import errno
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gaea_nas.cli import main
from gaea_nas.runtime import atomic_save, checkpoint as ckpt_mod, files as files_mod, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from search_helpers import make_pattern_folder, read_json, search_argv  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GAEA_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "data-cache"))


def _dataset(root: Path) -> Path:
    return make_pattern_folder(root, n_train=16, n_test=2)


def _argv(data: Path, out: Path, *extra, epochs=1):
    return search_argv(data, out, *extra, epochs=epochs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run (4 steps) and its dataset."""
    root = tmp_path_factory.mktemp("finished")
    data = _dataset(root / "pattern")
    mp = pytest.MonkeyPatch()
    mp.setenv("GAEA_DATA_CACHE", str(root / "cache"))
    try:
        assert main(_argv(data, root / "run")) == 0
    finally:
        mp.undo()
    return data, root / "run"


def _snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gaea: error:"), err
    for f in fragments:
        assert f in lines[0], (f, err)
    return lines[0]


def _no_temp_files(folder: Path):
    return [p.name for p in folder.rglob("*.tmp")] == []


# ---------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("extra,fragment", [
    (["--threads", "100000"], "--threads"),
    (["--seed", str(2 ** 70)], "--seed"),
    (["--seed", str(2 ** 63)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--set", "seed=1180591620717411303424"], "seed"),
    (["--batch-size", str(2 ** 70)], "--batch-size"),
    (["--allow-data-change"], "--allow-data-change"),
])
def test_out_of_range_arguments_exit_2_with_usage(tmp_path, capsys, extra, fragment):
    argv = ["search", "--out", str(tmp_path / "run"), "--device", "cpu", *extra]
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: gaea search" in err and fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cutout_larger_than_the_images_exits_2_in_one_line(tmp_path, capsys, finished):
    data, _ = finished
    assert main(_argv(data, tmp_path / "a" / "run", "--cutout", "1000000")) == 2
    _one_line_error(capsys, "--cutout 1000000", "16x16")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------
# checkpoints


def _set(path, value):
    def damage(state):
        node = state
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return state
    return damage


def _drop(key):
    def damage(state):
        del state[key]
        return state
    return damage


def _reshape_first_weight(state):
    k = next(k for k, v in state["model"].items() if v.dim() == 4)
    state["model"][k] = torch.zeros(3, 3)
    return state


def _reshape_momentum(state):
    st = state["weight_optimizer"]["state"]
    pid = next(p for p, e in st.items() if torch.is_tensor(e.get("momentum_buffer")))
    st[pid]["momentum_buffer"] = torch.zeros(2)
    return state


@pytest.mark.parametrize("damage,fields", [
    (_set(["epoch"], -5), ["field epoch", "-5"]),
    (_set(["position"], 10 ** 9), ["field position", "1000000000"]),
    (_set(["epoch"], "1"), ["field epoch"]),
    (_drop("rng"), ["field rng", "missing"]),
    (_set(["rng", "torch"], torch.zeros(3, dtype=torch.uint8)), ["rng.torch"]),
    (_set(["streams", "train", "position"], 10 ** 9), ["streams.train.position"]),
    (_set(["sums", "train_loss"], float("nan")), ["field sums"]),
    (_set(["metrics"], []), ["field metrics"]),
    (_reshape_first_weight, ["field model."]),
    (_drop("model"), ["field model", "missing"]),
    (_reshape_momentum, ["weight_optimizer.state"]),
    (lambda s: [s], ["expected a dict"]),
    (_set(["format"], 1), ["field format"]),
])
def test_malformed_checkpoint_is_refused_and_the_folder_kept(tmp_path, capsys, finished, damage, fields):
    _, src = finished
    run = tmp_path / "run"
    shutil.copytree(src, run)
    atomic_save(damage(load_checkpoint(run / "last.pt")), run / "last.pt")  # a valid hash, a wrong structure
    before = _snapshot(run)
    assert main(["search", "--resume", str(run), "--no-progress"]) == 1
    _one_line_error(capsys, str(run / "last.pt"), *fields)
    assert _snapshot(run) == before


def test_flipped_bit_in_last_pt_is_refused(tmp_path, capsys, finished):
    _, src = finished
    run = tmp_path / "run"
    shutil.copytree(src, run)
    state = load_checkpoint(run / "last.pt")
    w = max(state["model"].values(), key=lambda t: t.numel())
    data = bytearray((run / "last.pt").read_bytes())
    at = bytes(data).find(w.numpy().tobytes())
    assert at > 0
    data[at + 17] ^= 0x10
    (run / "last.pt").write_bytes(bytes(data))
    before = _snapshot(run)
    assert main(["search", "--resume", str(run), "--no-progress"]) == 1
    _one_line_error(capsys, str(run / "last.pt"))
    assert _snapshot(run) == before


def test_corrupt_run_config_exits_1_naming_it(tmp_path, capsys, finished):
    _, src = finished
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / "config.json").write_text("{not json")
    assert main(["search", "--resume", str(run)]) == 1
    _one_line_error(capsys, "config.json")


# ---------------------------------------------------------------------------------------
# the dataset


def test_changed_dataset_is_refused_unless_allowed(tmp_path, capsys):
    data = _dataset(tmp_path / "pattern")
    run = tmp_path / "run"
    assert main(_argv(data, run)) == 0
    old = read_json(run / "config.json")["data"]["sha256"]
    assert len(old) == 64 and load_checkpoint(run / "last.pt")["data"]["sha256"] == old
    capsys.readouterr()
    img = data / "train" / "c0" / "000.png"
    from PIL import Image
    Image.new("RGB", (16, 16), (255, 0, 0)).save(img)
    before = _snapshot(run)
    assert main(["search", "--resume", str(run), "--no-progress"]) == 1
    _one_line_error(capsys, "--allow-data-change", "dataset")
    assert _snapshot(run) == before
    assert main(["search", "--resume", str(run), "--no-progress", "--allow-data-change"]) == 0
    assert "dataset's content changed" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["data"]["sha256"] != old and (run / "result.json").is_file()


# ---------------------------------------------------------------------------------------
# full disk, failures and debris


def _full_disk_on(monkeypatch, name):
    real = files_mod.os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(files_mod.os, "replace", replace)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "last.pt"])
def test_full_disk_before_the_first_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch, finished, name):
    data, _ = finished
    _full_disk_on(monkeypatch, name)
    assert main(_argv(data, tmp_path / "runs" / "run")) == 1
    _one_line_error(capsys, name, "No space left on device")
    assert not (tmp_path / "runs").exists()


def test_torch_save_failing_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch, finished):
    data, _ = finished

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nframe #0 ...")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(_argv(data, tmp_path / "out")) == 1
    _one_line_error(capsys, "last.pt", "file write failed")
    assert _snapshot(tmp_path / "out") == {"notes.txt": b"mine"}  # an existing folder is left as it was


def test_full_disk_after_a_checkpoint_keeps_it(tmp_path, capsys, monkeypatch, finished):
    data, src = finished
    run = tmp_path / "run"
    shutil.copytree(src, run)
    before = _snapshot(run)
    _full_disk_on(monkeypatch, "last.pt")
    assert main(["search", "--resume", str(run), "--no-progress"]) == 1  # the finishing checkpoint fails
    _one_line_error(capsys, "last.pt", "No space left on device")
    assert _snapshot(run)["last.pt"] == before["last.pt"] and _no_temp_files(run)


def test_failed_searches_leave_no_run_folder(tmp_path, capsys, finished):
    data, _ = finished
    assert main(_argv(tmp_path / "missing-data", tmp_path / "a" / "run")) == 1
    _one_line_error(capsys, "missing-data")
    table = tmp_path / "table.csv.gz"
    table.write_bytes(b"\x1f\x8b garbage")
    assert main(_argv(data, tmp_path / "b" / "run", "--table", str(table))) == 1
    _one_line_error(capsys, "table.csv.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv.gz"]


def test_an_unexpected_loader_error_is_one_line_naming_the_dataset(tmp_path, capsys, monkeypatch, finished):
    from gaea_nas.search import loop

    def broken(name, root=None):
        raise KeyError("train_images")

    monkeypatch.setattr(loop, "load_dataset", broken)
    assert main(_argv(Path("/somewhere/data.tar"), tmp_path / "run")) == 1
    _one_line_error(capsys, "data.tar", "KeyError")
    assert not (tmp_path / "run").exists()


def test_data_caps_are_options(tmp_path, monkeypatch, capsys):
    """--max-image-pixels / --max-file-bytes set the loaders' caps: below the 16x16 images of the
    dataset the search stops in one line naming the image; the default caps admit them."""
    monkeypatch.setenv("GAEA_DATA_CACHE", str(tmp_path / "cache"))  # nothing cached: the caps apply
    data = _dataset(tmp_path / "pattern")
    assert main(_argv(data, tmp_path / "small", "--max-image-pixels", "100")) == 1
    _one_line_error(capsys, "pixels")
    assert not (tmp_path / "small").exists()
    assert main(_argv(data, tmp_path / "tiny", "--max-file-bytes", "10")) == 1
    _one_line_error(capsys, ".png")
    assert main(_argv(data, tmp_path / "ok", "--max-image-pixels", "256", "--max-file-bytes", str(1 << 20))) == 0
    assert read_json(tmp_path / "ok" / "config.json")["run"]["max_image_pixels"] == 256
