"""CIFAR-10 and CIFAR-100 in the official python format (a folder or the official tarball).

``find_cifar`` locates the data under a root (``cifar-10-batches-py/`` or
``cifar-10-python.tar.gz``; likewise ``cifar-100-python``), downloading the official tarball
with an md5 check when it is absent and ``download`` is true. ``read_cifar`` parses it,
reading tar members directly without extracting to disk.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import DatasetError
from .pickle_io import get_key, load_batch_pickle

__all__ = ["CIFAR_SPECS", "CifarSpec", "download_file", "find_cifar", "read_cifar"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str
    tarball: str
    url: str
    md5: str
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


CIFAR_SPECS: Dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec(
        "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",), "test", "meta", "fine_labels", "fine_label_names",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: Path, md5: Optional[str] = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (temp file + ``os.replace``), checking ``md5`` if given.

    Raises :class:`DatasetError` when offline, on an HTTP error or on a checksum mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
        if md5 is not None:
            got = _md5(tmp)
            if got != md5:
                raise DatasetError(f"{url}: md5 {got} does not match the official {md5}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DatasetError(f"could not download {url} ({e})") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def find_cifar(root: PathLike, name: str = "cifar10", download: bool = True) -> Path:
    """Return the folder or tarball holding ``name`` (cifar10/cifar100) under ``root``.

    ``root`` may be the extracted folder itself, the tarball, or a folder holding either.
    When nothing is found and ``download`` is true the official tarball is fetched into
    ``root``; otherwise (or when offline) a :class:`DatasetError` says which file to put where.
    """
    spec = CIFAR_SPECS[name]
    root = Path(root).expanduser()
    if root.is_file():
        return root
    candidates = [root / spec.folder, root, root / spec.tarball]
    for c in candidates:
        if c.is_dir() and (c / spec.test_file).is_file():
            return c
        if c.is_file():
            return c
    where = (f"put {spec.tarball} (from {spec.url}, md5 {spec.md5}) at {root / spec.tarball}, "
             f"or extract it so that {root / spec.folder / spec.test_file} exists")
    if not download:
        raise DatasetError(f"{name} not found under {root}: {where}")
    try:
        return download_file(spec.url, root / spec.tarball, spec.md5)
    except DatasetError as e:
        raise DatasetError(f"{name} not found under {root} and the download failed ({e}): {where}") from e


def _read_members(path: Path, wanted: List[str]) -> Dict[str, object]:
    """Unpickle the files named ``wanted`` from a folder or a tarball (by base name)."""
    out: Dict[str, object] = {}
    if path.is_dir():
        for w in wanted:
            p = path / w
            if not p.is_file():
                raise DatasetError(f"{path}: missing {w}")
            with open(p, "rb") as f:
                out[w] = load_batch_pickle(f, str(p))
        return out
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and base not in out:
                    f = tf.extractfile(m)
                    assert f is not None
                    out[base] = load_batch_pickle(io.BytesIO(f.read()), f"{path}:{m.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}); "
                           "delete it and download it again") from e
    missing = [w for w in wanted if w not in out]
    if missing:
        raise DatasetError(f"{path}: archive lacks {', '.join(missing)}")
    return out


def _images_labels(batch: object, spec: CifarSpec, what: str) -> Tuple[np.ndarray, np.ndarray]:
    data = np.asarray(get_key(batch, "data", what))
    labels = np.asarray(get_key(batch, spec.label_key, what), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"{what}: expected uint8 data [N, 3072] and N labels, got "
                           f"{data.dtype} {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_cifar(path: PathLike, name: str = "cifar10") -> Dict[str, object]:
    """Parse a CIFAR folder or tarball into uint8 NHWC arrays, int64 labels and class names."""
    spec = CIFAR_SPECS[name]
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    files = _read_members(path, [*spec.train_files, spec.test_file, spec.meta_file])
    train = [_images_labels(files[f], spec, f"{path}:{f}") for f in spec.train_files]
    test_x, test_y = _images_labels(files[spec.test_file], spec, f"{path}:{spec.test_file}")
    names = get_key(files[spec.meta_file], spec.names_key, f"{path}:{spec.meta_file}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x = np.concatenate([t[0] for t in train])
    train_y = np.concatenate([t[1] for t in train])
    for y, split in ((train_y, "train"), (test_y, "test")):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DatasetError(f"{path}: {split} labels outside 0..{len(classes) - 1}")
    return dict(train_images=train_x, train_labels=train_y, test_images=test_x,
                test_labels=test_y, classes=classes, mean=spec.mean, std=spec.std)
