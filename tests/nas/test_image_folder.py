"""Streaming image-folder loaders: shapes, normalisation, per-(seed, epoch) determinism,
sharding, subsets and the one-line errors for bad folders and files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gaea_nas.data import DatasetError
from gaea_nas.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, image_folder_loaders

CLASSES = ("ant", "bee", "cat")
N_TRAIN, N_VAL = 4, 2  # per class


def _colour(uid: int):
    return (20 * uid % 256, 255 - 11 * uid, 7 * uid)


def make_folder(root: Path, sizes=((20, 16), (13, 18))) -> Path:
    """3 classes of solid-colour images, each colour unique (its id can be read back from any
    crop); class ``bee`` is JPEG, the others PNG."""
    uid = 0
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                ext = "jpg" if cls == "bee" else "png"
                Image.new("RGB", sizes[k % len(sizes)], _colour(uid)).save(root / split / cls / f"{k:03d}.{ext}")
                uid += 1
    return root


def _ids(images: torch.Tensor) -> list:
    """The image id of each batch item, from its mean colour (solid colours, no jitter)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3)
    std = torch.tensor(IMAGENET_STD).view(1, 3)
    rgb = (images.mean(dim=(2, 3)) * std + mean) * 255
    table = torch.tensor([_colour(u) for u in range(len(CLASSES) * (N_TRAIN + N_VAL))], dtype=torch.float32)
    dist = (rgb[:, None, :] - table[None]).abs().amax(-1)
    assert (dist.min(1).values < 3).all(), "an image's colour matches no source image"
    return dist.argmin(1).tolist()


def _loaders(root, **kw):
    args = dict(batch_size=5, eval_batch_size=4, workers=0, image_size=8, resize=10,
                color_jitter=(0, 0, 0, 0), pin_memory=False)
    args.update(kw)
    return image_folder_loaders(root, **args)


def _epoch(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs") / "ds")


def test_shapes_labels_and_normalisation(folder):
    ld = _loaders(folder)
    assert (ld.num_classes, ld.train_size, ld.test_size) == (3, 12, 6)
    assert ld.classes == list(CLASSES)
    assert (len(ld.train), len(ld.test)) == (3, 2)  # ceil(12 / 5), ceil(6 / 4)
    train = _epoch(ld.train)
    assert [len(y) for _, y in train] == [5, 5, 2]
    for x, y in train:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == torch.int64
    test = _epoch(ld.test)
    x, y = torch.cat([b[0] for b in test]), torch.cat([b[1] for b in test])
    assert y.tolist() == [0, 0, 1, 1, 2, 2]  # evaluation order: class order, then file names
    assert _ids(x) == list(range(12, 18))
    # PNG val images are exact solid colours: normalised with the ImageNet mean / std
    want = (torch.tensor(_colour(12), dtype=torch.float32) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0], want.view(3, 1, 1).expand(3, 8, 8), atol=1e-6, rtol=0)
    ids = _ids(torch.cat([b[0] for b in train]))
    assert sorted(ids) == list(range(12))
    labels = torch.cat([b[1] for b in train]).tolist()
    assert labels == [i // N_TRAIN for i in ids]


def test_epoch_and_seed_determinism_any_worker_count(folder):
    jitter = (0.4, 0.4, 0.4, 0.2)
    a, b = _loaders(folder, color_jitter=jitter, seed=3), _loaders(folder, color_jitter=jitter, seed=3, workers=2)
    c = _loaders(folder, color_jitter=jitter, seed=4)
    runs = {}
    for name, ld in (("a", a), ("b", b), ("c", c)):
        for epoch in (1, 0, 1):
            ld.set_epoch(epoch)
            runs.setdefault((name, epoch), []).append(_epoch(ld.train))
    for key, epochs in runs.items():  # re-running an epoch (after another) repeats it exactly
        for (x0, y0), (x1, y1) in zip(epochs[0], epochs[-1]):
            assert torch.equal(x0, x1) and torch.equal(y0, y1), key
    for (xa, ya), (xb, yb) in zip(runs[("a", 1)][0], runs[("b", 1)][0]):  # workers=0 == workers=2
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    flat = {k: torch.cat([x for x, _ in v[0]]) for k, v in runs.items()}
    assert not torch.equal(flat[("a", 0)], flat[("a", 1)])
    assert not torch.equal(flat[("a", 1)], flat[("c", 1)])
    test_a, test_b = _epoch(a.test), _epoch(b.test)  # evaluation is deterministic
    assert all(torch.equal(p[0], q[0]) for p, q in zip(test_a, test_b))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharding_partitions_the_sets(folder, world_size):
    train_ids, test_ids = [], []
    for rank in range(world_size):
        ld = _loaders(folder, rank=rank, world_size=world_size, batch_size=2, eval_batch_size=1)
        ld.set_epoch(2)
        train = _epoch(ld.train)
        test = _epoch(ld.test)
        assert (len(ld.train), len(ld.test)) == (len(train), len(test))
        train_ids += _ids(torch.cat([x for x, _ in train]))
        test_ids += _ids(torch.cat([x for x, _ in test]))
    if 12 % world_size == 0:
        assert sorted(train_ids) == list(range(12))
    else:  # the train sampler pads the last shards with repeats
        assert set(train_ids) == set(range(12)) and len(train_ids) == -(-12 // world_size) * world_size
    assert sorted(test_ids) == list(range(12, 18))  # evaluation shards: exact, unpadded


def test_subsets_are_seeded_and_stable(folder):
    a = _loaders(folder, train_images=5, test_images=4, seed=1)
    b = _loaders(folder, train_images=5, test_images=4, seed=1)
    c = _loaders(folder, train_images=5, test_images=4, seed=2)
    assert (a.train_size, a.test_size, len(a.train), len(a.test)) == (5, 4, 1, 1)

    def ids(ld):
        return sorted(_ids(torch.cat([x for x, _ in _epoch(ld.train)]))), _ids(torch.cat([x for x, _ in _epoch(ld.test)]))

    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert set(ids(a)[0]) <= set(range(12)) and len(set(ids(a)[0])) == 5
    assert len(set(ids(a)[1])) == 4
    assert _loaders(folder, train_images=100).train_size == 12


def test_class_mismatch_and_layout_errors(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "val" / "dog").mkdir()
    with pytest.raises(DatasetError,
                       match=r"d/val: class folders differ from .*d/train \(missing: \[\], extra: \['dog'\]\)"):
        _loaders(root)
    with pytest.raises(DatasetError, match=r"nope: no such folder"):
        _loaders(tmp_path / "nope")
    (tmp_path / "e" / "train" / "a").mkdir(parents=True)
    (tmp_path / "e" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"e/train: no images in its class folders"):
        _loaders(tmp_path / "e")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, workers):
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "cat" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError) as e:
        _epoch(_loaders(root, workers=workers).train)
    assert str(bad) in str(e.value) and "cannot decode image" in str(e.value) and "\n" not in str(e.value)
    big = root / "val" / "ant" / "000.png"
    size = big.stat().st_size
    with pytest.raises(DatasetError, match=rf"{big}: {size} bytes exceeds the size cap of {size - 1} bytes"):
        _epoch(_loaders(root, workers=workers, max_file_bytes=size - 1).test)
    with pytest.raises(DatasetError, match=rf"{big}: image of 20x16 pixels exceeds the cap of 319 pixels"):
        _epoch(_loaders(root, workers=workers, max_image_pixels=319).test)


def test_argument_errors(folder):
    with pytest.raises(ValueError, match="backend must be one of"):
        _loaders(folder, backend="opencv")
    try:
        import nvidia.dali  # noqa: F401
        has_dali = torch.cuda.is_available()
    except ImportError:
        has_dali = False
    if not has_dali:
        with pytest.raises(RuntimeError, match="backend='dali' needs"):
            _loaders(folder, backend="dali")
    for name, value in (("batch_size", 0), ("workers", -1), ("rank", 2), ("train_images", 0), ("seed", -1)):
        with pytest.raises(ValueError, match=name):
            _loaders(folder, **{name: value, "world_size": 2})
    with pytest.raises(ValueError, match="color_jitter"):
        _loaders(folder, color_jitter=(0.4, 0.4))
    with pytest.raises(ValueError, match="epoch"):
        _loaders(folder).set_epoch(-1)
