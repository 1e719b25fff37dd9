"""``load_dataset``: the one entry point from a dataset name or path to a :class:`Dataset`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .cache import cached_arrays, default_cache_dir
from .cifar import CIFAR_SPECS, find_cifar, read_cifar, resolve_cifar
from .dataset import Dataset, channel_stats
from .errors import DatasetError
from .image_folder import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MEMBER_BYTES, is_archive, read_image_folder
from .imagenet16 import find_imagenet16, read_imagenet16

__all__ = ["DATASET_NAMES", "load_dataset"]

PathLike = Union[str, os.PathLike]
DATASET_NAMES = ("cifar10", "cifar100", "imagenet16-120")
_ALIASES = {"cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100",
            "cifar-100": "cifar100", "imagenet16-120": "imagenet16-120",
            "imagenet16": "imagenet16-120", "imagenet-16-120": "imagenet16-120"}


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _detect(path: Path) -> str:
    """The format of an existing path: cifar10, cifar100, imagenet16-120 or image-folder."""
    name = path.name.lower()
    for key, spec in CIFAR_SPECS.items():
        if name in (spec.folder, spec.tarball):
            return key
        if path.is_dir() and ((path / spec.folder).is_dir() or (path / spec.tarball).is_file()):
            return key
    if path.is_dir() and (path / "data_batch_1").is_file():
        return "cifar10"
    for c in (path, path / "ImageNet16", path / "imagenet16"):
        if c.is_dir() and (c / "val_data").is_file() and (c / "train_data_batch_1").is_file():
            return "imagenet16-120"
    return "image-folder"


def load_dataset(name_or_path: PathLike, root: Optional[PathLike] = None,
                 cache_dir: Optional[PathLike] = None, download: bool = True,
                 limit_per_class: Optional[int] = None, use_cache: bool = True, *,
                 max_batch_bytes: Optional[int] = None, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Dataset:
    """Load ``cifar10``, ``cifar100``, ``imagenet16-120`` (from ``root``) or a path.

    A path may be an image folder / tar(.gz) with ``train/<class>/*`` and ``test/<class>/*``,
    or a CIFAR / ImageNet16 folder or tarball (detected by name). ``root`` defaults to
    ``<cache_dir>/downloads``; CIFAR is downloaded there when absent and ``download`` is true.
    Decoded arrays are cached under ``cache_dir`` (see :func:`default_cache_dir`).
    ``limit_per_class`` applies to image folders only. Raises :class:`DatasetError` on a
    missing path, unknown name, corrupt file or a file over a size cap.

    Size caps (they bound memory on untrusted files; raise them for genuine larger data; they
    do not change the decoded arrays, so they are not part of the cache key):
    ``max_batch_bytes`` caps one CIFAR / ImageNet16 batch file (default derived from the
    format, see :func:`~gaea_nas.data.cifar.read_cifar` and
    :func:`~gaea_nas.data.imagenet16.read_imagenet16`); ``max_member_bytes`` (16 MiB) and
    ``max_image_pixels`` (4096 x 4096) cap one image of an image folder (see
    :func:`~gaea_nas.data.image_folder.read_image_folder`).
    """
    key = str(name_or_path)
    kind = _ALIASES.get(key.lower()) if not isinstance(name_or_path, Path) else None
    if kind is not None:
        base = Path(root).expanduser() if root is not None else default_cache_dir(cache_dir) / "downloads"
        source = find_imagenet16(base) if kind == "imagenet16-120" else find_cifar(base, kind, download)
    else:
        source = Path(key).expanduser()
        if not source.exists():
            if os.sep in key or is_archive(key) or "." in Path(key).name:
                raise DatasetError(f"{source}: no such file or folder")
            raise DatasetError(f"unknown dataset {key!r}: expected one of {', '.join(DATASET_NAMES)} "
                               "or the path of an image folder / tar archive")
        kind = _detect(source)
        if kind in CIFAR_SPECS:
            source = resolve_cifar(source, kind)  # DIR holding cifar-10-batches-py/ reads that folder
        elif kind == "imagenet16-120":
            source = find_imagenet16(source)

    options: dict = {}
    if kind in CIFAR_SPECS:
        build = lambda: read_cifar(source, kind, max_batch_bytes=max_batch_bytes)  # noqa: E731
    elif kind == "imagenet16-120":
        build = lambda: read_imagenet16(source, 120, max_batch_bytes=max_batch_bytes)  # noqa: E731
    else:
        options = {"limit_per_class": limit_per_class}

        def build():
            arrays = read_image_folder(source, limit_per_class, max_member_bytes=max_member_bytes,
                                       max_image_pixels=max_image_pixels)
            arrays["mean"], arrays["std"] = channel_stats(arrays["train_images"])
            return arrays

    arrays, hit = cached_arrays(kind, source, options, build, cache_dir, use_cache)
    return Dataset(
        name=kind if kind != "image-folder" else _stem(Path(source)),
        train_images=np.ascontiguousarray(arrays["train_images"]),
        train_labels=np.asarray(arrays["train_labels"], dtype=np.int64),
        test_images=np.ascontiguousarray(arrays["test_images"]),
        test_labels=np.asarray(arrays["test_labels"], dtype=np.int64),
        classes=list(arrays["classes"]),
        mean=tuple(float(v) for v in arrays["mean"]),
        std=tuple(float(v) for v in arrays["std"]),
        source=str(source), from_cache=hit)
