"""Format loaders of gaea_nas.data on small generated files: CIFAR-10/100, ImageNet16-120,
image folders (folder and tar, flat and under one top folder), and clear errors."""
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from gaea_nas.data import DatasetError, load_dataset, read_cifar, read_image_folder, read_imagenet16
from gaea_nas.data import cifar as cifar_mod


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(folder: Path, per_batch: int = 4) -> dict:
    rng = np.random.default_rng(0)
    out = {"train": [], "labels": []}
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
        out["train"].append(data)
        out["labels"] += labels
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _write_pickle(folder / "test_batch", {b"data": test, b"labels": [1, 2, 3]})
    _write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    out["test"] = test
    return out


def make_tar(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


def test_cifar10_folder_and_tarball(tmp_path):
    folder = tmp_path / "root" / "cifar-10-batches-py"
    ref = make_cifar10(folder)
    arrays = read_cifar(folder, "cifar10")
    assert arrays["train_images"].shape == (20, 32, 32, 3) and arrays["train_images"].dtype == np.uint8
    # official layout: 1024 R, then G, then B, row-major
    np.testing.assert_array_equal(arrays["train_images"][0, :, :, 1].ravel(), ref["train"][0][0, 1024:2048])
    assert arrays["train_labels"].tolist() == ref["labels"]
    assert arrays["test_labels"].tolist() == [1, 2, 3]
    assert arrays["classes"][:2] == ["c0", "c1"]

    tarball = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    from_tar = read_cifar(tarball, "cifar10")
    np.testing.assert_array_equal(from_tar["train_images"], arrays["train_images"])

    ds = load_dataset("cifar10", root=tmp_path / "root", cache_dir=tmp_path / "cache", download=False)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.mean == (0.4914, 0.4822, 0.4465)
    ds2 = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache2", download=False)  # tarball
    np.testing.assert_array_equal(ds2.test_images, ds.test_images)
    ds3 = load_dataset(str(tarball), cache_dir=tmp_path / "cache3")  # a path, detected by name
    assert ds3.name == "cifar10" and len(ds3.train_labels) == 20


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(1)
    _write_pickle(folder / "train", {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                                     b"fine_labels": [0, 5, 99, 3, 3, 1], b"coarse_labels": [0] * 6})
    _write_pickle(folder / "test", {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                    b"fine_labels": [7, 8], b"coarse_labels": [0, 0]})
    _write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                    b"coarse_label_names": [b"a"] * 20})
    ds = load_dataset("cifar100", root=tmp_path, cache_dir=tmp_path / "c", download=False)
    assert ds.train_labels.tolist() == [0, 5, 99, 3, 3, 1] and ds.num_classes == 100
    assert ds.train_labels.dtype == np.int64 and ds.test_images.shape == (2, 32, 32, 3)


def test_cifar_missing_offline_names_file(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "c", download=False)

    def offline(*a, **k):
        import urllib.error
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match=r"download failed.*cifar-100-python.tar.gz"):
        load_dataset("cifar100", root=tmp_path, cache_dir=tmp_path / "c")
    assert not list(tmp_path.glob("*.part*"))


def test_download_checks_md5(tmp_path, monkeypatch):
    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", lambda *a, **k: Resp(b"not the file"))
    with pytest.raises(DatasetError, match="md5"):
        cifar_mod.download_file("http://x/y.tar.gz", tmp_path / "y.tar.gz", md5="0" * 32)
    assert not (tmp_path / "y.tar.gz").exists()
    import hashlib
    ok = hashlib.md5(b"not the file").hexdigest()
    assert cifar_mod.download_file("http://x/y.tar.gz", tmp_path / "y.tar.gz", md5=ok).read_bytes() == b"not the file"


def test_corrupt_pickle_and_tar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="data_batch_3.*truncated"):
        read_cifar(folder)
    (folder / "data_batch_3").write_bytes(raw)
    tarball = make_tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_cifar(tarball)


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    _write_pickle(folder / "test_batch", {b"data": os.getcwd, b"labels": []})
    with pytest.raises(DatasetError, match="disallowed"):
        read_cifar(folder)


def test_imagenet16_120(tmp_path):
    folder = tmp_path / "ImageNet16"
    rng = np.random.default_rng(2)
    kept = []
    for i in range(1, 11):
        labels = [1, 120, 121, 1000, int(rng.integers(1, 200))]
        data = rng.integers(0, 256, (5, 768), dtype=np.uint8)
        _write_pickle(folder / f"train_data_batch_{i}", {"data": data, "labels": labels, "mean": np.zeros(768)})
        kept += [l - 1 for l in labels if l <= 120]
    _write_pickle(folder / "val_data", {"data": rng.integers(0, 256, (3, 768), dtype=np.uint8), "labels": [2, 300, 120]})
    arrays = read_imagenet16(folder)
    assert arrays["train_labels"].tolist() == kept
    assert arrays["train_images"].shape == (len(kept), 16, 16, 3)
    assert arrays["test_labels"].tolist() == [1, 119]
    ds = load_dataset("imagenet16-120", root=tmp_path, cache_dir=tmp_path / "c")
    assert ds.num_classes == 120 and ds.image_size == (16, 16)
    with pytest.raises(DatasetError, match="ImageNet16"):
        load_dataset("imagenet16-120", root=tmp_path / "nowhere", cache_dir=tmp_path / "c")


def make_image_folder(root: Path, classes=("cat", "ant", "dog"), n_train=3, n_test=2, size=(8, 6)) -> None:
    rng = np.random.default_rng(3)
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")


@pytest.mark.parametrize("top", [None, "mydata"])
@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_variants(tmp_path, top, as_tar):
    src = tmp_path / "src"
    make_image_folder(src / top if top else src)
    (src / (top or "") / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # ignored
    path = src
    if as_tar:
        path = tmp_path / "data.tar"
        with tarfile.open(path, "w") as tf:
            for child in sorted(src.iterdir()):
                tf.add(child, arcname=child.name)
    arrays = read_image_folder(path)
    assert arrays["classes"] == ["ant", "cat", "dog"]
    assert arrays["train_images"].shape == (9, 6, 8, 3) and arrays["train_images"].dtype == np.uint8
    assert arrays["train_labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert arrays["test_labels"].tolist() == [0, 0, 1, 1, 2, 2]
    first = np.asarray(Image.open(src / (top or "") / "train" / "ant" / "0000.png").convert("RGB"))
    np.testing.assert_array_equal(arrays["train_images"][0], first)
    limited = read_image_folder(path, limit_per_class=1)
    assert limited["train_labels"].tolist() == [0, 1, 2]


def test_image_folder_errors(tmp_path):
    make_image_folder(tmp_path / "a")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "a" / "train" / "dog" / "9999.png")
    with pytest.raises(DatasetError, match="differ in size"):
        read_image_folder(tmp_path / "a")
    make_image_folder(tmp_path / "b")
    (tmp_path / "b" / "train" / "ant" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="0001.png.*cannot decode"):
        read_image_folder(tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        read_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetError, match="bad.tar.gz"):
        load_dataset(bad, cache_dir=tmp_path / "c")


def test_load_dataset_unknown_and_missing(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(str(tmp_path / "nope" / "data.tar.gz"), cache_dir=tmp_path)


def test_image_folder_dataset_stats(tmp_path):
    make_image_folder(tmp_path / "d")
    ds = load_dataset(tmp_path / "d", cache_dir=tmp_path / "c")
    x = ds.train_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, x.std(0), rtol=1e-6)
    assert ds.name == "d"


def test_shared_cifar10_jpeg_smoke(tmp_path):
    SHARED = shared_data("cifar10", "cifar10-jpeg.tar.gz")
    ds = load_dataset(SHARED, cache_dir=tmp_path, limit_per_class=20)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.train_images.shape == (200, 32, 32, 3) and ds.test_images.shape == (200, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [20] * 10
    assert all(0.3 < m < 0.6 for m in ds.mean) and not ds.from_cache
    assert load_dataset(SHARED, cache_dir=tmp_path, limit_per_class=20).from_cache
