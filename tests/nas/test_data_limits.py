"""Bounds on untrusted dataset files: crafted pickles, tar bombs, oversized images and malformed
labels give one single-line DatasetError naming the file, without allocating much memory.

Every file is small and made by the test; peak memory is measured with tracemalloc."""
import gzip
import io
import pickle
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gaea_nas.data import DatasetError, load_dataset, read_cifar, read_image_folder, read_imagenet16
from gaea_nas.data.pickle_io import load_batch_pickle
from test_data_formats import _write_pickle, make_cifar10, make_image_folder

MB = 1 << 20


class Peak:
    """Peak traced allocation (bytes) inside the block."""

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


def _raises(fn, pattern, max_peak=8 * MB):
    with Peak() as p, pytest.raises(DatasetError, match=pattern) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 2100, msg
    assert p.bytes < max_peak, f"peak {p.bytes / MB:.1f} MB"
    return msg


# -- crafted pickles ------------------------------------------------------------------------
def _glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _long(n):
    enc = pickle.encode_long(n)
    return b"\x8a" + bytes([len(enc)]) + enc


def _prog(*ops):
    """A protocol-2 pickle of {b'data': <ops>, b'labels': []}."""
    return (b"\x80\x02}(C\x04data" + b"".join(ops) + b"C\x06labels]u.")


BYTEARRAY_BOMB = _prog(_glob("builtins", "bytearray"), _long(2 ** 42), b"\x85R")
# _frombuffer(bytearray(400e6), dtype('u1'), (400e6,), 'C'): a few hundred bytes asking for 400 MB
FROMBUFFER_BOMB = _prog(
    _glob("numpy.core.numeric", "_frombuffer"), b"(",
    _glob("builtins", "bytearray"), _long(400_000_000), b"\x85R",
    _glob("numpy", "dtype"), b"X\x02\x00\x00\x00u1\x89\x88\x87R",
    _long(400_000_000), b"\x85", b"X\x01\x00\x00\x00C", b"tR")
# numpy's _reconstruct asked for a 1 TB array up front
RECONSTRUCT_BOMB = _prog(_glob("numpy.core.multiarray", "_reconstruct"),
                         _glob("numpy", "ndarray"), _long(2 ** 40), b"\x85C\x01b\x87R")
# a short raw buffer claimed to fill a huge array (ndarray.__setstate__)
SETSTATE_LIE = _prog(_glob("numpy.core.multiarray", "_reconstruct"), _glob("numpy", "ndarray"),
                     b"K\x00\x85C\x01b\x87R",
                     b"(K\x01", _long(10 ** 9), b"K\x01\x86",
                     _glob("numpy", "dtype"), b"X\x02\x00\x00\x00u1\x89\x88\x87R",
                     b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
                     b"\x89C\x04abcdtb")
# one 1 MB string memoised and turned into bytes 300 times: 300 MB from a 1 MB file
_big = "x" * MB
AMPLIFIED = _prog(b"(", _glob("_codecs", "encode"), b"X" + len(_big).to_bytes(4, "little") + _big.encode(),
                  b"q\x01X\x06\x00\x00\x00latin1q\x02\x86R",
                  *[_glob("_codecs", "encode") + b"h\x01h\x02\x86R"] * 300, b"l")
OBJECT_ARRAY = pickle.dumps({b"data": np.array([1, "a"], dtype=object), b"labels": []}, protocol=2)


@pytest.mark.parametrize("blob, pattern", [
    (BYTEARRAY_BOMB, "disallowed type builtins.bytearray"),
    (FROMBUFFER_BOMB, "disallowed type builtins.bytearray"),
    (RECONSTRUCT_BOMB, r"bad array shape \(1099511627776,\)"),
    (SETSTATE_LIE, "needs 1000000000 bytes, the file holds 4"),
    (AMPLIFIED, r"byte string of 1048576 bytes exceeds the size cap \(max_bytes\)"),
    (OBJECT_ARRAY, "disallowed array dtype"),
], ids=["bytearray", "frombuffer", "reconstruct", "setstate", "amplified", "object"])
def test_crafted_pickles_refused_before_allocating(tmp_path, blob, pattern):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    (folder / "data_batch_2").write_bytes(blob)
    # the allocation budget is the batch cap: 65.6 MB by default, 300 MB asked for by AMPLIFIED
    _raises(lambda: read_cifar(folder), rf"data_batch_2: .*{pattern}", max_peak=72 * MB)
    _raises(lambda: read_cifar(folder, max_batch_bytes=4 * MB), rf"data_batch_2: .*{pattern}",
            max_peak=8 * MB + 3 * len(blob))


def test_pickle_protocols_and_caps(tmp_path):
    data = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072) % 251
    for protocol in (2, 3, 4, 5):
        blob = pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4], "mean": np.zeros(3), "n": np.int64(3)},
                            protocol=protocol)
        back = load_batch_pickle(io.BytesIO(blob), "b")
        np.testing.assert_array_equal(back[b"data"], data)
        assert back["n"] == 3
        with pytest.raises(DatasetError, match=r"b: .*size cap of 5000 bytes"):
            load_batch_pickle(io.BytesIO(blob), "b", max_bytes=5000)
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    with pytest.raises(DatasetError, match="data_batch_1: .* exceeds the size cap of 4096 bytes"):
        read_cifar(folder, max_batch_bytes=4096)
    assert len(read_cifar(folder, max_batch_bytes=64 * 1024)["train_labels"]) == 20


def test_official_size_batch_within_default_cap(tmp_path):
    """A full CIFAR-10 batch (10,000 x 3,072 bytes) pickled the heaviest way (protocol 2) fits."""
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    rng = np.random.default_rng(0)
    _write_pickle(folder / "test_batch", {b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                                          b"labels": [int(v) for v in rng.integers(0, 10, 10_000)]})
    assert read_cifar(folder)["test_images"].shape == (10_000, 32, 32, 3)


# -- malformed labels and meta --------------------------------------------------------------
def _cifar_with(tmp_path, file, obj):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    _write_pickle(folder / file, obj)
    return folder


D4 = np.zeros((4, 3072), np.uint8)


@pytest.mark.parametrize("file, obj, pattern", [
    ("data_batch_1", {b"data": D4, b"labels": "0123"}, "key 'labels' must be a list of ints, found str"),
    ("data_batch_1", {b"data": D4, b"labels": [0, 1, 2]}, "key 'labels' has 3 labels for 4 images"),
    ("data_batch_1", {b"data": D4, b"labels": [0, 1, 2, 10]}, "key 'labels' holds label 10 outside 0..9"),
    ("data_batch_1", {b"data": D4, b"labels": [0, -1, 2, 3]}, "key 'labels' holds label -1 outside 0..9"),
    ("data_batch_1", {b"data": D4, b"labels": [0, 1.5, 2, 3]}, "key 'labels' must be a list of ints"),
    ("data_batch_1", {b"data": D4, b"labels": [0, b"x", 2, 3]}, "key 'labels' must be a list of ints"),
    ("data_batch_1", {b"data": D4, b"labels": [0, 2 ** 70, 2, 3]}, "key 'labels' must be a list of ints"),
    ("data_batch_1", {b"data": D4, b"labels": [[0], [1], [2], [3]]}, "key 'labels' must be a list of ints"),
    ("data_batch_1", {b"data": D4}, "missing key 'labels'"),
    ("data_batch_1", {b"labels": [0]}, "missing key 'data'"),
    ("data_batch_1", [1, 2], "expected a dict, found list"),
    ("data_batch_1", {b"data": D4.astype(np.int16), b"labels": [0] * 4}, r"key 'data' must be uint8 \[N, 3072\]"),
    ("data_batch_1", {b"data": [b"x"] * 4, b"labels": [0] * 4}, r"key 'data' must be uint8 \[N, 3072\], found list"),
    ("batches.meta", {b"label_names": [b"a"] * 9}, "key 'label_names' must be a list of 10 names"),
    ("batches.meta", {b"label_names": b"abcdefghij"}, "key 'label_names' must be a list of 10 names"),
    ("batches.meta", {b"label_names": [1] * 10}, "key 'label_names' must be a list of 10 names"),
    ("batches.meta", {}, "missing key 'label_names'"),
])
def test_malformed_cifar_names_file_and_key(tmp_path, file, obj, pattern):
    folder = _cifar_with(tmp_path, file, obj)
    _raises(lambda: read_cifar(folder), rf"{file}: {pattern}")


@pytest.mark.parametrize("labels, pattern", [
    ([1, 0, 3], "key 'labels' holds label 0 outside 1..1000"),
    ([1, 1001, 3], "key 'labels' holds label 1001 outside 1..1000"),
    ([1, 2], "key 'labels' has 2 labels for 3 images"),
    ({"a": 1}, "key 'labels' must be a list of ints, found dict"),
])
def test_malformed_imagenet16_names_file_and_key(tmp_path, labels, pattern):
    folder = tmp_path / "ImageNet16"
    data = np.zeros((3, 768), np.uint8)
    for i in range(1, 11):
        _write_pickle(folder / f"train_data_batch_{i}", {"data": data, "labels": [1, 2, 3]})
    _write_pickle(folder / "val_data", {"data": data, "labels": labels})
    _raises(lambda: read_imagenet16(folder), rf"val_data: {pattern}")
    # a folder holding ImageNet16/ is read from there
    _write_pickle(folder / "val_data", {"data": data, "labels": [5, 6, 7]})
    assert read_imagenet16(tmp_path)["test_labels"].tolist() == [4, 5, 6]
    assert load_dataset(tmp_path, cache_dir=tmp_path / "c").name == "imagenet16-120"


# -- the folder holding cifar-10-batches-py/ ------------------------------------------------
def test_dir_holding_cifar_folder_reads_it(tmp_path):
    ref = make_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    ds = load_dataset(tmp_path / "data", cache_dir=tmp_path / "c")
    assert ds.name == "cifar10" and ds.train_labels.tolist() == ref["labels"]
    assert ds.source == str(tmp_path / "data" / "cifar-10-batches-py")
    assert read_cifar(tmp_path / "data")["test_labels"].tolist() == [1, 2, 3]
    # the same folder holding only the official tarball
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "data" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "cifar-10-python.tar.gz").rename(other / "cifar-10-python.tar.gz")
    ds2 = load_dataset(str(other), cache_dir=tmp_path / "c")
    assert ds2.name == "cifar10" and ds2.source.endswith("cifar-10-python.tar.gz")


# -- tar bombs ------------------------------------------------------------------------------
def gz_tar_huge_member(path: Path, name: str, size: int, before=()) -> Path:
    """A .tar.gz whose member ``name`` holds ``size`` zero bytes (a multiple of 1 MiB), written as
    concatenated gzip members: about 1 KB of file per MiB of member."""
    zeros = gzip.compress(b"\0" * MB, 9)
    with open(path, "wb") as f:
        for n, data in before:
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            f.write(gzip.compress(ti.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)))
        ti = tarfile.TarInfo(name)
        ti.size = size
        f.write(gzip.compress(ti.tobuf(tarfile.GNU_FORMAT)))
        for _ in range(size // MB):
            f.write(zeros)
        f.write(gzip.compress(b"\0" * 1024))
    return path


def sparse_tar(path: Path, name: str, realsize: int, before=()) -> Path:
    """A plain tar whose GNU sparse member ``name`` expands to ``realsize`` bytes from 512 stored."""
    ti = tarfile.TarInfo(name)
    ti.size = 512
    buf = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    buf[156:157] = b"S"
    buf[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)
    buf[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)
    buf[482] = 0
    buf[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    out = io.BytesIO()
    for n, data in before:
        t = tarfile.TarInfo(n)
        t.size = len(data)
        out.write(t.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512))
    out.write(bytes(buf) + b"\0" * 512 + b"\0" * 1024)
    path.write_bytes(out.getvalue())
    return path


def _png(w=4, h=4) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize("kind", ["gz", "sparse"])
def test_tar_member_bomb_image_folder(tmp_path, kind):
    before = [("test/a/0.png", _png())]
    if kind == "gz":
        path = gz_tar_huge_member(tmp_path / "d.tar.gz", "train/a/0.png", 1 << 30, before)
        assert path.stat().st_size < 2 * MB
    else:
        path = sparse_tar(tmp_path / "d.tar", "train/a/0.png", 1 << 30, before)
    _raises(lambda: read_image_folder(path), r"d\.tar(\.gz)?:train/a/0\.png: 1073741824 bytes exceeds the size cap")
    _raises(lambda: load_dataset(path, cache_dir=tmp_path / "c"), "train/a/0.png: 1073741824 bytes exceeds")


@pytest.mark.parametrize("kind", ["gz", "sparse"])
def test_tar_member_bomb_cifar_tarball(tmp_path, kind):
    name = "cifar-10-batches-py/data_batch_1"
    if kind == "gz":
        path = gz_tar_huge_member(tmp_path / "cifar-10-python.tar.gz", name, 1 << 30)
    else:
        path = sparse_tar(tmp_path / "cifar-10-python.tar", name, 1 << 30)
    _raises(lambda: read_cifar(path), rf"{path.name}:{name}: 1073741824 bytes exceeds the size cap")


def test_member_cap_option(tmp_path):
    make_image_folder(tmp_path / "src", size=(64, 64))
    tar = tmp_path / "d.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for s in ("train", "test"):
            tf.add(tmp_path / "src" / s, arcname=s)
    biggest = max(p.stat().st_size for p in (tmp_path / "src").rglob("*.png"))
    _raises(lambda: read_image_folder(tar, max_member_bytes=biggest - 1), "exceeds the size cap")
    _raises(lambda: read_image_folder(tmp_path / "src", max_member_bytes=biggest - 1), "exceeds the size cap")
    assert read_image_folder(tar, max_member_bytes=biggest)["train_images"].shape == (9, 64, 64, 3)


# -- oversized images -----------------------------------------------------------------------
def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` pixels, with one tiny IDAT."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("w, h, pattern", [
    (20000, 20000, "image exceeds the cap of 16777216 pixels .*400000000 pixels"),
    (5000, 4000, "image of 5000x4000 pixels exceeds the cap"),
])
def test_oversized_image_refused_from_header(tmp_path, w, h, pattern):
    make_image_folder(tmp_path / "d")
    (tmp_path / "d" / "train" / "ant" / "0001.png").write_bytes(png_header_only(w, h))
    msg = _raises(lambda: read_image_folder(tmp_path / "d"), rf"ant/0001\.png: {pattern}")
    assert "Traceback" not in msg


def test_pixel_cap_option(tmp_path):
    make_image_folder(tmp_path / "d", size=(40, 30))
    _raises(lambda: read_image_folder(tmp_path / "d", max_image_pixels=40 * 30 - 1), "40x30 pixels exceeds")
    assert read_image_folder(tmp_path / "d", max_image_pixels=40 * 30)["train_images"].shape[1:] == (30, 40, 3)
