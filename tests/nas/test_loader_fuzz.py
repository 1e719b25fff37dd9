"""Seeded fuzzing of every dataset / table loader on small valid files made here: random bytes,
truncations (random ones and each of the last 24 bytes), byte flips and spliced copies. Each case must load or raise only the documented
error type (DatasetError for the data loaders, ValueError for NB201Table) with a one-line
message, and stay within a few MB of traced memory."""
import gzip
import io
import pickle
import resource
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from gaea_nas.data import DatasetError, read_cifar, read_image_folder, read_imagenet16
from gaea_nas.spaces.nb201.table import NB201Table

CASES = 60  # random cases per loader; six loaders
TAIL_CUTS = 24  # and every truncation of the last bytes (cuts inside the trailing opcodes / fields)
MB = 1 << 20


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar(folder):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", {b"batch_label": b"b", b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                             b"labels": [1, 9], b"filenames": [b"a.png", b"b.png"]})
    _pickle(folder / "test_batch", {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 3]})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})


def _imagenet16(folder):
    rng = np.random.default_rng(1)
    for i in range(1, 11):
        _pickle(folder / f"train_data_batch_{i}", {"data": rng.integers(0, 256, (2, 768), dtype=np.uint8),
                                                   "labels": [1, 130], "mean": np.zeros(768)})
    _pickle(folder / "val_data", {"data": rng.integers(0, 256, (3, 768), dtype=np.uint8), "labels": [5, 120, 999]})


def _image_tar(path, fmt):
    rng = np.random.default_rng(2)
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                b = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(b, fmt)
                ti = tarfile.TarInfo(f"top/{split}/{cls}/0.{fmt.lower()}")
                ti.size = len(b.getvalue())
                tf.addfile(ti, io.BytesIO(b.getvalue()))


def _table(path):
    cols = "index,arch_str,cifar10_valid,cifar10_test,cifar100_valid,cifar100_test,imagenet16_valid,imagenet16_test"
    rows = [f"{k},|nor_conv_3x3~0|+|skip_connect~{k}|,90.5,93,70,71.25,40,41" for k in range(6)]
    with gzip.open(path, "wt", newline="") as f:
        f.write("\n".join([cols, *rows]) + "\n")


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(6)
    n = len(data)
    if kind == 0:  # random bytes
        return rng.integers(0, 256, int(rng.integers(0, 2 * n + 1)), dtype=np.uint8).tobytes()
    if kind == 1:  # truncation
        return data[: int(rng.integers(0, n))]
    if kind == 2:  # a few byte flips
        out = bytearray(data)
        for i in rng.integers(0, n, int(rng.integers(1, 9))):
            out[i] ^= int(rng.integers(1, 256))
        return bytes(out)
    if kind == 3:  # a slice copied elsewhere
        a, b, at = sorted(int(v) for v in rng.integers(0, n, 3))
        return data[:at] + data[a:b] + data[at:]
    if kind == 4:  # truncation near the end (inside the small trailing fields)
        return data[: n - 1 - int(rng.integers(0, max(1, n // 10)))]
    # truncation followed by garbage
    cut = int(rng.integers(0, n))
    return data[:cut] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()


def _loaders(root):
    """(name, file to mutate, loader, documented error type)."""
    _cifar(root / "cifar-10-batches-py")
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _imagenet16(root / "ImageNet16")
    _image_tar(root / "png.tar.gz", "PNG")
    _image_tar(root / "jpeg.tar", "JPEG")
    _table(root / "t.csv.gz")
    caps = dict(max_member_bytes=64 * 1024, max_image_pixels=1 << 16)
    return [
        ("cifar-batch", root / "cifar-10-batches-py" / "data_batch_1",
         lambda: read_cifar(root / "cifar-10-batches-py"), DatasetError),
        ("cifar-tarball", root / "cifar-10-python.tar.gz",
         lambda: read_cifar(root / "cifar-10-python.tar.gz"), DatasetError),
        ("imagenet16-batch", root / "ImageNet16" / "val_data",
         lambda: read_imagenet16(root / "ImageNet16"), DatasetError),
        ("png-tar-gz", root / "png.tar.gz", lambda: read_image_folder(root / "png.tar.gz", **caps), DatasetError),
        ("jpeg-tar", root / "jpeg.tar", lambda: read_image_folder(root / "jpeg.tar", **caps), DatasetError),
        ("nb201-csv-gz", root / "t.csv.gz", lambda: NB201Table(root / "t.csv.gz", allow_partial=True), ValueError),
    ]


def test_loaders_on_mutated_files(tmp_path):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {}
    for li, (name, target, load, error) in enumerate(_loaders(tmp_path)):
        load()  # the valid file loads (and lazy imports happen outside the measurement)
        original = target.read_bytes()
        rng = np.random.default_rng(1000 + li)
        ok = failed = 0
        tail_cuts = [original[: len(original) - k] for k in range(1, TAIL_CUTS + 1)]
        for case in range(CASES + TAIL_CUTS):
            data = _mutate(original, rng) if case < CASES else tail_cuts[case - CASES]
            target.write_bytes(data)
            tracemalloc.start()
            try:
                load()
                ok += 1
            except error as e:
                msg = str(e)
                assert "\n" not in msg and msg, f"{name} case {case}: {msg!r}"
                failed += 1
            except Exception as e:  # noqa: BLE001 - anything else is a bug
                raise AssertionError(f"{name} case {case}: {type(e).__name__}: {e}") from e
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            assert peak < 4 * MB + 16 * len(data), f"{name} case {case}: peak {peak / MB:.1f} MB"
        target.write_bytes(original)
        outcomes[name] = (ok, failed)
    assert all(f >= CASES // 4 for _, f in outcomes.values()), outcomes  # the mutations do bite
    # ru_maxrss is in KiB on Linux: no case came near a large allocation
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 256 * 1024
