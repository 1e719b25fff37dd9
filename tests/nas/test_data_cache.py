"""The decoded-array disk cache: second load hits it (no decoding), a changed source or
different options miss it, writes are atomic, and a corrupt entry is rebuilt."""
import os
import time

import numpy as np
import pytest
from PIL import Image

from gaea_nas.data import cache_path, default_cache_dir, load_dataset
from gaea_nas.data import image_folder as image_folder_mod


def _make(root, n=2):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.fixture
def count_decodes(monkeypatch):
    calls = {"n": 0}
    real = image_folder_mod._decode_image

    def counting(*args):
        calls["n"] += 1
        return real(*args)
    monkeypatch.setattr(image_folder_mod, "_decode_image", counting)
    return calls


def test_second_load_hits_cache(tmp_path, count_decodes):
    _make(tmp_path / "d")
    first = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c")
    assert count_decodes["n"] == 8 and not first.from_cache
    second = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c")
    assert count_decodes["n"] == 8 and second.from_cache
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert first.classes == second.classes and first.mean == second.mean
    assert second.train_labels.dtype == np.int64
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp files left behind
    with np.load(files[0], allow_pickle=False) as z:  # plain arrays, no pickled objects
        assert z["train_images"].dtype == np.uint8


def test_changed_source_or_options_invalidate(tmp_path, count_decodes):
    _make(tmp_path / "d")
    load_dataset(tmp_path / "d", cache_dir=tmp_path / "c")
    n = count_decodes["n"]
    p = tmp_path / "d" / "train" / "a" / "0.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(p)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    ds = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c")
    assert not ds.from_cache and count_decodes["n"] == 2 * n
    assert (ds.train_images[0] == 7).all()
    ds = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c", limit_per_class=1)
    assert not ds.from_cache and len(ds.train_labels) == 2


def test_corrupt_entry_rebuilt_and_env_dir(tmp_path, monkeypatch, count_decodes):
    _make(tmp_path / "d")
    monkeypatch.setenv("GAEA_DATA_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    assert default_cache_dir(tmp_path / "x") == tmp_path / "x"
    load_dataset(tmp_path / "d")
    entry = cache_path("image-folder", tmp_path / "d", {"limit_per_class": None})
    assert entry.is_file() and entry.parent == tmp_path / "envcache"
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable data cache"):
        ds = load_dataset(tmp_path / "d")
    assert not ds.from_cache and load_dataset(tmp_path / "d").from_cache
