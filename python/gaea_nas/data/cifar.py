"""CIFAR-10 and CIFAR-100 in the official python format (a folder or the official tarball).

``find_cifar`` locates the data under a root (``cifar-10-batches-py/`` or
``cifar-10-python.tar.gz``; likewise ``cifar-100-python``), downloading the official tarball
with an md5 check when it is absent and ``download`` is true. ``read_cifar`` parses it,
reading tar members directly without extracting to disk, with every batch file's size capped
(``max_batch_bytes``, see :func:`read_cifar`) and its contents checked.
"""
from __future__ import annotations

import hashlib
import lzma
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
from .pickle_io import MiB, get_key, load_batch_pickle

__all__ = ["CIFAR_SPECS", "CifarSpec", "check_images", "check_labels", "download_file", "find_cifar", "read_cifar",
           "resolve_cifar"]

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
    num_classes: int
    max_images_per_file: int  # the largest official batch file (CIFAR-100's train holds 50,000)

    @property
    def default_max_batch_bytes(self) -> int:
        """Default size cap of one batch file: twice its largest official image data + 4 MiB."""
        return 2 * self.max_images_per_file * 3072 + 4 * MiB


CIFAR_SPECS: Dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, 10_000),
    "cifar100": CifarSpec(
        "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",), "test", "meta", "fine_labels", "fine_label_names",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100, 50_000),
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


def _read_members(path: Path, wanted: List[str], max_bytes: int) -> Dict[str, object]:
    """Unpickle the files named ``wanted`` from a folder or a tarball (by base name), each
    capped at ``max_bytes`` (size from the file system or tar header checked before reading)."""
    out: Dict[str, object] = {}
    if path.is_dir():
        for w in wanted:
            p = path / w
            if not p.is_file():
                raise DatasetError(f"{path}: missing {w}")
            try:
                with open(p, "rb") as f:
                    out[w] = load_batch_pickle(f, str(p), max_bytes, size=os.fstat(f.fileno()).st_size)
            except OSError as e:
                raise DatasetError(f"{p}: cannot read ({e})") from e
        return out
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and base not in out:
                    f = tf.extractfile(m)
                    if f is None:
                        raise DatasetError(f"{path}:{m.name}: not a regular file")
                    out[base] = load_batch_pickle(f, f"{path}:{m.name}", max_bytes, size=m.size)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}); "
                           "delete it and download it again") from e
    missing = [w for w in wanted if w not in out]
    if missing:
        raise DatasetError(f"{path}: archive lacks {', '.join(missing)}")
    return out


def check_labels(batch: object, key: str, n: int, low: int, high: int, what: str) -> np.ndarray:
    """``batch[key]`` as int64 ``[n]`` labels in ``low..high``, else a :class:`DatasetError`
    naming the file and key."""
    raw = get_key(batch, key, what)
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise DatasetError(f"{what}: key {key!r} must be a list of ints, found {type(raw).__name__}")
    if len(raw) == 0:
        labels = np.zeros(0, np.int64)
    else:
        try:
            labels = np.asarray(raw)
        except (ValueError, TypeError, OverflowError) as e:
            raise DatasetError(f"{what}: key {key!r} must be a list of ints ({e})") from e
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DatasetError(f"{what}: key {key!r} must be a list of ints, found "
                               f"{labels.dtype} values of shape {labels.shape}")
    if len(labels) != n:
        raise DatasetError(f"{what}: key {key!r} has {len(labels)} labels for {n} images")
    if n and (labels.min() < low or labels.max() > high):
        bad = labels[(labels < low) | (labels > high)][0]
        raise DatasetError(f"{what}: key {key!r} holds label {int(bad)} outside {low}..{high}")
    return labels.astype(np.int64)


def check_images(batch: object, side: int, what: str) -> np.ndarray:
    """``batch['data']`` as uint8 ``[N, 3*side*side]``, else a :class:`DatasetError`."""
    data = get_key(batch, "data", what)
    row = 3 * side * side
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{what}: key 'data' must be uint8 [N, {row}], found {desc}")
    return data


def _images_labels(batch: object, spec: CifarSpec, num_classes: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    data = check_images(batch, 32, what)
    labels = check_labels(batch, spec.label_key, len(data), 0, num_classes - 1, what)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _class_names(meta: object, spec: CifarSpec, what: str) -> List[str]:
    names = get_key(meta, spec.names_key, what)
    if (not isinstance(names, (list, tuple)) or len(names) != spec.num_classes
            or not all(isinstance(n, (bytes, str)) and len(n) <= 1000 for n in names)):
        raise DatasetError(f"{what}: key {spec.names_key!r} must be a list of {spec.num_classes} names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def resolve_cifar(path: PathLike, name: str = "cifar10") -> Path:
    """The folder or tarball to read for ``path``: ``path`` itself, or ``path/<folder>`` /
    ``path/<tarball>`` when ``path`` is a folder that holds the official folder or tarball."""
    spec = CIFAR_SPECS[name]
    path = Path(path).expanduser()
    if path.is_dir() and not (path / spec.test_file).is_file():
        for c in (path / spec.folder, path / spec.tarball):
            if c.exists():
                return c
    return path


def read_cifar(path: PathLike, name: str = "cifar10", *, max_batch_bytes: Optional[int] = None) -> Dict[str, object]:
    """Parse a CIFAR folder or tarball into uint8 NHWC arrays, int64 labels and class names.

    ``path`` is the extracted folder, the tarball, or a folder holding either (see
    :func:`resolve_cifar`). Every batch file is checked before use: ``data`` uint8
    ``[N, 3072]``, N int labels in ``0..classes-1`` and, in the meta file, the 10 (100) class
    names; anything else raises :class:`DatasetError` naming the file and key.

    Size cap: each batch file (folder file or tar member, size checked before reading) and
    the bytes its unpickling allocates are capped at ``max_batch_bytes``, by default twice
    the largest official batch plus 4 MiB (CIFAR-10: 10,000 x 3,072 bytes of images per
    file, 65.6 MB; CIFAR-100: 50,000 x 3,072, 311.4 MB); pass a larger value to read bigger
    files in the same format.
    """
    spec = CIFAR_SPECS[name]
    path = resolve_cifar(path, name)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    cap = max_batch_bytes if max_batch_bytes is not None else spec.default_max_batch_bytes
    files = _read_members(path, [*spec.train_files, spec.test_file, spec.meta_file], cap)
    classes = _class_names(files[spec.meta_file], spec, f"{path}:{spec.meta_file}")
    train = [_images_labels(files[f], spec, len(classes), f"{path}:{f}") for f in spec.train_files]
    test_x, test_y = _images_labels(files[spec.test_file], spec, len(classes), f"{path}:{spec.test_file}")
    train_x = np.concatenate([t[0] for t in train])
    train_y = np.concatenate([t[1] for t in train])
    return dict(train_images=train_x, train_labels=train_y, test_images=test_x,
                test_labels=test_y, classes=classes, mean=spec.mean, std=spec.std)
