"""ImageNet16-120 in NAS-Bench-201's pickled format.

The folder (or a tarball of it) holds ``train_data_batch_1`` .. ``train_data_batch_10`` and
``val_data``: dicts with ``data`` uint8 ``[N, 3*16*16]`` and 1-based ``labels``. As NB201's
``ImageNet16(..., use_num_of_class_only=120)`` does, only labels <= 120 are kept and they are
shifted to 0-based. Batch files are size-capped and checked (see :func:`read_imagenet16`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .cifar import _read_members, check_images, check_labels
from .errors import DatasetError
from .pickle_io import MiB

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "IMAGENET16_MEAN", "IMAGENET16_STD", "find_imagenet16", "read_imagenet16"]

PathLike = Union[str, os.PathLike]
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
MAX_LABEL = 1000  # labels are 1-based ImageNet classes
DEFAULT_MAX_BATCH_BYTES = 2 * 130_000 * 16 * 16 * 3 + 4 * MiB
# NB201's constants (lib/datasets/get_dataset_with_transform.py).
IMAGENET16_MEAN = tuple(x / 255 for x in (122.68, 116.66, 104.01))
IMAGENET16_STD = tuple(x / 255 for x in (63.22, 61.26, 65.09))


def find_imagenet16(root: PathLike) -> Path:
    """The ImageNet16 folder under ``root`` (``root`` itself, ``root/ImageNet16``) or a tarball."""
    root = Path(root).expanduser()
    if root.is_file():
        return root
    for c in (root, root / "ImageNet16", root / "imagenet16"):
        if (c / VAL_FILE).is_file():
            return c
    for c in (root / "ImageNet16.tar", root / "ImageNet16.tar.gz"):
        if c.is_file():
            return c
    raise DatasetError(
        f"ImageNet16-120 not found under {root}: put NAS-Bench-201's ImageNet16 folder "
        f"(train_data_batch_1..10 and val_data) at {root / 'ImageNet16'} (it cannot be downloaded "
        "automatically)")


def _split(batch: object, what: str, num_classes: int):
    data = check_images(batch, 16, what)
    labels = check_labels(batch, "labels", len(data), 1, MAX_LABEL, what)
    keep = (labels >= 1) & (labels <= num_classes)
    images = data[keep].reshape(-1, 3, 16, 16).transpose(0, 2, 3, 1).copy()
    return images, labels[keep] - 1


def read_imagenet16(path: PathLike, num_classes: int = 120, *,
                    max_batch_bytes: Optional[int] = None) -> Dict[str, object]:
    """Parse the NB201 ImageNet16 pickles, keeping classes 1..num_classes (as 0-based).

    Every file must hold ``data`` uint8 ``[N, 768]`` and N int ``labels`` in 1..1000; anything
    else raises :class:`DatasetError` naming the file and key.

    Size cap: each batch file (folder file or tar member, size checked before reading) and the
    bytes its unpickling allocates are capped at ``max_batch_bytes``, by default
    :data:`DEFAULT_MAX_BATCH_BYTES` (twice 130,000 images x 16 x 16 x 3 bytes, the largest
    official train batch, plus 4 MiB: 203.9 MB); pass a larger value for bigger files.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_LABEL:
        raise DatasetError(f"ImageNet16: num_classes must be in 1..{MAX_LABEL}, got {num_classes!r}")
    path = Path(path)
    if path.is_dir() and not (path / VAL_FILE).is_file():
        for c in (path / "ImageNet16", path / "imagenet16"):
            if (c / VAL_FILE).is_file():
                path = c
                break
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    cap = max_batch_bytes if max_batch_bytes is not None else DEFAULT_MAX_BATCH_BYTES
    files = _read_members(path, [*TRAIN_FILES, VAL_FILE], cap)
    train = [_split(files[f], f"{path}:{f}", num_classes) for f in TRAIN_FILES]
    test_x, test_y = _split(files[VAL_FILE], f"{path}:{VAL_FILE}", num_classes)
    return dict(train_images=np.concatenate([t[0] for t in train]),
                train_labels=np.concatenate([t[1] for t in train]),
                test_images=test_x, test_labels=test_y,
                classes=[str(i) for i in range(num_classes)],
                mean=IMAGENET16_MEAN, std=IMAGENET16_STD)
