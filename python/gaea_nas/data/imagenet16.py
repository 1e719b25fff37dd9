"""ImageNet16-120 in NAS-Bench-201's pickled format.

The folder (or a tarball of it) holds ``train_data_batch_1`` .. ``train_data_batch_10`` and
``val_data``: dicts with ``data`` uint8 ``[N, 3*16*16]`` and 1-based ``labels``. As NB201's
``ImageNet16(..., use_num_of_class_only=120)`` does, only labels <= 120 are kept and they are
shifted to 0-based.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .cifar import _read_members
from .errors import DatasetError
from .pickle_io import get_key

__all__ = ["IMAGENET16_MEAN", "IMAGENET16_STD", "find_imagenet16", "read_imagenet16"]

PathLike = Union[str, os.PathLike]
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
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
    data = np.asarray(get_key(batch, "data", what))
    labels = np.asarray(get_key(batch, "labels", what), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 16 * 16 or len(labels) != len(data):
        raise DatasetError(f"{what}: expected uint8 data [N, 768] and N labels, got "
                           f"{data.dtype} {data.shape} and {labels.shape}")
    keep = (labels >= 1) & (labels <= num_classes)
    images = data[keep].reshape(-1, 3, 16, 16).transpose(0, 2, 3, 1).copy()
    return images, labels[keep] - 1


def read_imagenet16(path: PathLike, num_classes: int = 120) -> Dict[str, object]:
    """Parse the NB201 ImageNet16 pickles, keeping classes 1..num_classes (as 0-based)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    files = _read_members(path, [*TRAIN_FILES, VAL_FILE])
    train = [_split(files[f], f"{path}:{f}", num_classes) for f in TRAIN_FILES]
    test_x, test_y = _split(files[VAL_FILE], f"{path}:{VAL_FILE}", num_classes)
    return dict(train_images=np.concatenate([t[0] for t in train]),
                train_labels=np.concatenate([t[1] for t in train]),
                test_images=test_x, test_labels=test_y,
                classes=[str(i) for i in range(num_classes)],
                mean=IMAGENET16_MEAN, std=IMAGENET16_STD)
