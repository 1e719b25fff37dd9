"""Image-folder datasets: ``train/<class>/*`` and ``test/<class>/*`` in a folder or a tarball.

The two splits may sit directly in the folder/archive or under one top folder (as in
``cifar10-jpeg.tar.gz``: ``cifar10-jpeg/train/<class>/NNNN.jpg``). Class index = sorted class
name order; files within a class are taken in sorted name order. Tar members are read directly
(in archive order, so a .tar.gz is decompressed forward only), never extracted to disk. Image
files and members are size-capped and image dimensions are checked from the header before
decoding (see :func:`read_image_folder`).
"""
from __future__ import annotations

import io
import lzma
import os
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .errors import DatasetError
from .pickle_io import read_capped

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_MEMBER_BYTES", "IMAGE_EXTENSIONS", "is_archive",
           "read_image_folder"]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test")
# PIL decoders admitted (the formats of IMAGE_EXTENSIONS; never EPS and the like)
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "GIF", "WEBP", "TIFF")
DEFAULT_MAX_MEMBER_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(path: PathLike) -> bool:
    """Whether ``path`` names a tar archive by its suffix."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _decode_image(data: bytes, what: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one encoded image to RGB uint8 ``[H, W, 3]``, refusing (before decoding) an
    image whose header announces more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap applies
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DatasetError(f"{what}: image of {w}x{h} pixels exceeds the cap of {max_pixels} "
                                       "pixels (max_image_pixels); resize it or raise the cap")
                if w <= 0 or h <= 0:
                    raise DatasetError(f"{what}: image of {w}x{h} pixels is empty")
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{what}: image exceeds the cap of {max_pixels} pixels (max_image_pixels) and "
                           f"Pillow's own limit ({e})") from e
    except MemoryError as e:
        raise DatasetError(f"{what}: cannot decode image (out of memory)") from e
    except Exception as e:  # PIL's plugins raise many types on malformed data
        raise DatasetError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from e


# An index entry: (split, class name, file name) -> key used to fetch the bytes.
Index = Dict[Tuple[str, str, str], object]


def _parse_rel(parts: Sequence[str]) -> Optional[Tuple[str, str, str, str]]:
    """(top, split, class, file) for 'split/class/file' or 'top/split/class/file', else None."""
    if len(parts) == 3 and parts[0] in SPLITS:
        return "", parts[0], parts[1], parts[2]
    if len(parts) == 4 and parts[1] in SPLITS:
        return parts[0], parts[1], parts[2], parts[3]
    return None


def _select(index: Index, where: str, limit_per_class: Optional[int]):
    tops = {k[0] for k in index}
    if not index:
        raise DatasetError(f"{where}: no images found in train/<class>/ and test/<class>/ "
                           "(directly or under one top folder)")
    if len(tops) > 1:
        raise DatasetError(f"{where}: several top folders hold train/test splits: {sorted(tops)}")
    by_split: Dict[str, Dict[str, List[str]]] = {s: {} for s in SPLITS}
    for (_, split, cls, fname) in index:
        by_split[split].setdefault(cls, []).append(fname)
    classes = sorted(by_split["train"])
    if not classes:
        raise DatasetError(f"{where}: no train/<class>/ images")
    if not by_split["test"]:
        raise DatasetError(f"{where}: no test/<class>/ images")
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        raise DatasetError(f"{where}: test classes {unknown} have no train images")
    top = tops.pop()
    chosen: Dict[str, List[Tuple[str, int, Tuple[str, str, str, str]]]] = {}
    for split in SPLITS:
        items = []
        for ci, cls in enumerate(classes):
            names = sorted(by_split[split].get(cls, []))
            if limit_per_class is not None:
                names = names[:limit_per_class]
            items += [(n, ci, (top, split, cls, n)) for n in names]
        chosen[split] = items
    return classes, chosen


def _stack(images: List[np.ndarray], names: List[str], where: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        bad = next(n for n, im in zip(names, images) if im.shape != first)
        raise DatasetError(f"{where}: images differ in size ({names[0]} is {first[1]}x{first[0]}, "
                           f"{bad} is {images[names.index(bad)].shape[1]}x"
                           f"{images[names.index(bad)].shape[0]}); resize them to one size first")
    return np.stack(images)


def _assemble(classes, chosen, decoded: Dict[Tuple[str, str, str, str], np.ndarray], where: str):
    out: Dict[str, object] = {"classes": classes}
    for split in SPLITS:
        names, images, labels = [], [], []
        for fname, ci, key in chosen[split]:
            rel = "/".join(p for p in key if p)
            images.append(decoded[key])
            names.append(rel)
            labels.append(ci)
        out[f"{split}_images"] = _stack(images, names, where)
        out[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    return out


def _read_dir(root: Path, limit_per_class: Optional[int], max_bytes: int, max_pixels: int):
    index: Index = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).parts
        for f in filenames:
            if _is_image(f):
                parsed = _parse_rel((*rel_dir, f))
                if parsed:
                    index[parsed] = Path(dirpath) / f
    classes, chosen = _select(index, str(root), limit_per_class)
    decoded = {}
    for split in SPLITS:
        for _, _, key in chosen[split]:
            p = Path(index[key])
            try:
                with open(p, "rb") as f:
                    data = read_capped(f, max_bytes, str(p), os.fstat(f.fileno()).st_size)
            except OSError as e:
                raise DatasetError(f"{p}: cannot read ({e})") from e
            decoded[key] = _decode_image(data, str(p), max_pixels)  # decoded at once: one encoded file in memory
    return _assemble(classes, chosen, decoded, str(root))


def _read_tar(path: Path, limit_per_class: Optional[int], max_bytes: int, max_pixels: int):
    try:
        with tarfile.open(path, "r:*") as tf:
            index: Index = {}
            for m in tf:
                if m.isfile() and _is_image(m.name):
                    parsed = _parse_rel([p for p in m.name.split("/") if p not in ("", ".")])
                    if parsed:
                        if m.size > max_bytes:  # refused here, before decompressing past it
                            read_capped(io.BytesIO(), max_bytes, f"{path}:{m.name}", m.size)
                        index[parsed] = m
            classes, chosen = _select(index, str(path), limit_per_class)
            wanted = sorted((key for s in SPLITS for _, _, key in chosen[s]),
                            key=lambda k: index[k].offset_data)
            decoded = {}
            for key in wanted:  # archive order: forward seeks only
                m = index[key]
                f = tf.extractfile(m)
                if f is None:
                    raise DatasetError(f"{path}:{m.name}: not a regular file")
                data = read_capped(f, max_bytes, f"{path}:{m.name}", m.size)
                rel = "/".join(p for p in key if p)
                decoded[key] = _decode_image(data, f"{path}:{rel}", max_pixels)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e})") from e
    return _assemble(classes, chosen, decoded, str(path))


def _looks_like_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError):
        return False


def read_image_folder(path: PathLike, limit_per_class: Optional[int] = None, *,
                      max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                      max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Dict[str, object]:
    """Decode an image-folder dataset (folder or tar/tar.gz) into uint8 NHWC arrays.

    ``limit_per_class`` keeps only the first N files (sorted names) of every class in each
    split, for tests and small budgets. All images must share one size.

    Caps (each raises one :class:`DatasetError` naming the archive and member, or the file):

    * ``max_member_bytes`` (default 16 MiB): the encoded size of one image file or tar
      member, checked from the file system / tar header before reading (in an archive, any
      image member over the cap is refused as soon as its header is seen, selected or not),
      and reading (or decompressing) stops after ``max_member_bytes + 1`` bytes;
    * ``max_image_pixels`` (default 4096 x 4096): width x height of one image, checked from
      the image header before decoding (Pillow's own limit, ``Image.MAX_IMAGE_PIXELS`` x 2,
      applies on top). Only JPEG, PNG, BMP, PPM/PGM, GIF, WebP and TIFF decoders are used.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dir(path, limit_per_class, max_member_bytes, max_image_pixels)
    if not is_archive(path) and not _looks_like_tar(path):
        raise DatasetError(f"{path}: not a folder or a tar archive")
    return _read_tar(path, limit_per_class, max_member_bytes, max_image_pixels)
