"""Atomic checkpoints, corrupt-file errors and RNG round trips (gaea_nas.runtime.checkpoint)."""
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from gaea_nas import checkpoint as ckpt_mod
from gaea_nas.runtime import files as files_mod
from gaea_nas.runtime.checkpoint import (
    CheckpointError,
    Checkpointer,
    atomic_save,
    capture_rng_state,
    content_hash,
    load_checkpoint,
    restore_rng_state,
)
from gaea_nas.runtime.files import WriteError, write_json, write_jsonl


def _tmp_files(folder):
    return [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_atomic_save_round_trip(tmp_path):
    obj = {"w": torch.arange(10.0), "epoch": 3, "metrics": [{"loss": 1.5}]}
    p = atomic_save(obj, tmp_path / "sub" / "last.pt")
    out = load_checkpoint(p)
    assert torch.equal(out["w"], obj["w"]) and out["epoch"] == 3 and out["metrics"] == obj["metrics"]
    assert _tmp_files(tmp_path / "sub") == []


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.ones(4)}, path)
    real_save = torch.save

    def exploding_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # bytes land in the temp file...
        raise OSError("disk on fire")  # ...then the "crash" before the rename

    monkeypatch.setattr(ckpt_mod.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_save({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    out = load_checkpoint(path)
    assert out["epoch"] == 1 and torch.equal(out["w"], torch.ones(4))
    assert _tmp_files(tmp_path) == []


def test_crash_in_fsync_and_replace(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)
    for name in ("fsync", "replace"):
        def boom(*a, **k):
            raise OSError(f"{name} failed")
        monkeypatch.setattr(ckpt_mod.os, name, boom)
        with pytest.raises(OSError):
            atomic_save({"epoch": 2}, path)
        monkeypatch.undo()
        assert load_checkpoint(path)["epoch"] == 1
        assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_error_names_file(tmp_path, damage):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)


def test_missing_file_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def _draws(gens):
    out = [random.random(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), torch.rand(5)]
    out += [torch.rand(3, generator=g) for g in gens]
    if torch.cuda.is_available():
        out.append(torch.rand(4, device="cuda").cpu())
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if torch.is_tensor(x):
            assert torch.equal(x, y)
        else:
            assert x == y


def test_rng_round_trip_bitwise(tmp_path):
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.randn()  # leave a cached gaussian in numpy's state
    _draws(gens)
    state = capture_rng_state(gens)
    expected = _draws(gens)
    # through a real checkpoint file, loaded with weights_only=True
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    loaded = load_checkpoint(tmp_path / "rng.pt")["rng"]
    _draws(gens)  # advance everything
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(loaded, gens)
    _assert_same(_draws(gens), expected)


def test_rng_generator_count_mismatch():
    state = capture_rng_state([torch.Generator()])
    with pytest.raises(ValueError, match="1 torch.Generator"):
        restore_rng_state(state, [])


def test_checkpointer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.abc.tmp").write_bytes(b"partial")  # left by a killed writer
    c = Checkpointer(run, keep_epochs=True)
    assert _tmp_files(run) == [] and not c.exists()
    with pytest.raises(CheckpointError):
        c.load()
    c.save({"epoch": 0}, epoch=0)
    c.save({"epoch": 1}, epoch=1)
    assert c.load()["epoch"] == 1
    assert [p.name for p in c.epoch_checkpoints()] == ["epoch_000.pt", "epoch_001.pt"]
    assert load_checkpoint(c.epoch_path(0))["epoch"] == 0
    c2 = Checkpointer(tmp_path / "run2")
    c2.save({"epoch": 5}, epoch=5)
    assert c2.epoch_checkpoints() == [] and c2.load()["epoch"] == 5


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from gaea_nas.runtime.checkpoint import atomic_save
    path = sys.argv[1]
    i = 0
    while True:
        w = torch.full((20000,), float(i))
        atomic_save({"i": i, "w": w, "sum": float(w.sum())}, path)
        i += 1
    """
)


def test_sigkill_while_writing_never_corrupts(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "writer never wrote a checkpoint"
            time.sleep(0.01)
        time.sleep(0.3)  # let it overwrite the file many times, then kill it mid-loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    out = load_checkpoint(path)
    assert out["i"] >= 0 and torch.equal(out["w"], torch.full((20000,), float(out["i"])))
    Checkpointer(tmp_path)  # cleans any temp file the killed writer left
    assert _tmp_files(tmp_path) == []


def test_content_hash_is_stable_through_a_file(tmp_path):
    obj = {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16), "s": torch.tensor(7),
           "t": (1, 2.5, "x", None, True), 3: [torch.arange(5)]}
    atomic_save(obj, tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw[ckpt_mod.HASH_KEY] == content_hash(obj) == content_hash(load_checkpoint(tmp_path / "c.pt"))
    assert content_hash({"w": torch.ones(2)}) != content_hash({"w": torch.ones(1, 2)})  # shape counts
    assert content_hash({"w": torch.ones(2)}) != content_hash({"w": torch.ones(2, dtype=torch.float64)})


def test_flipped_bit_in_a_tensor_is_refused(tmp_path):
    w = torch.linspace(1, 2, 4096)
    path = atomic_save({"model": {"w": w}, "epoch": 1}, tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    at = bytes(data).find(w.numpy().tobytes())
    assert at > 0
    data[at + 1000] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt.*(sha256|corrupt)"):
        load_checkpoint(path)


def test_unhashed_checkpoint_is_refused(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt carries no content hash"):
        load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:778] . "
                                                "PytorchStreamWriter failed writing file data/0: file write failed\n"
                                                "more")])
def test_full_disk_at_checkpoint_keeps_previous_and_no_temp(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise error

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises((OSError, CheckpointError)) as e:
        Checkpointer(tmp_path).save({"epoch": 2})
    msg = str(e.value)
    assert "last.pt" in msg and len(msg.splitlines()) == 1
    if isinstance(error, OSError):
        assert isinstance(e.value, WriteError) and e.value.errno == errno.ENOSPC and "No space left" in msg
    assert path.read_bytes() == before and _tmp_files(tmp_path) == []


@pytest.mark.parametrize("writer", ["json", "jsonl"])
def test_full_disk_in_json_writers_names_file_and_cleans_up(tmp_path, monkeypatch, writer):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_mod.os, "fsync", full)
    target = tmp_path / ("config.json" if writer == "json" else "metrics.jsonl")
    with pytest.raises(WriteError, match=f"cannot write .*{target.name}: No space left on device") as e:
        (write_json(target, {"a": 1}) if writer == "json" else write_jsonl(target, [{"a": 1}]))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_checkpointer_removes_every_stale_temp_file(tmp_path):
    for name in (".last.pt.x1.tmp", ".config.json.123.tmp", ".metrics.jsonl.ab.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    Checkpointer(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp"]


@pytest.mark.parametrize("field,damage", [
    ("python", lambda s: s.update(python=(3, (1, 2), None))),
    ("numpy", lambda s: s["numpy"].update(keys=torch.zeros(10, dtype=torch.int64))),
    ("numpy.pos", lambda s: s["numpy"].update(pos=10 ** 9)),
    ("torch", lambda s: s.update(torch=torch.zeros(7, dtype=torch.uint8))),
    ("torch", lambda s: s.pop("torch")),
    ("generators", lambda s: s.update(generators=[torch.zeros(3)])),
])
def test_malformed_rng_state_is_refused_before_restoring(field, damage):
    state = capture_rng_state()
    damage(state)
    random.seed(1)
    expected = random.random()
    random.seed(1)
    with pytest.raises(ValueError, match=f"rng.{field}"):
        restore_rng_state(state)
    assert random.random() == expected  # nothing was restored
