"""Image-folder datasets, read two ways.

* :func:`image_folder_loaders` streams an ImageFolder-layout folder (``train/<class>/*`` and
  ``val/<class>/*``, e.g. ImageNet) through DataLoader workers that decode, augment and batch
  the images (ImageNet transforms); nothing but the file list is held in memory.
* :func:`read_image_folder` decodes a small dataset (below) into arrays, for the cache and the
  device-side batches of the search.

:func:`read_image_folder` reads ``train/<class>/*`` and ``test/<class>/*`` in a folder or a tarball.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.utils.data
import torch.utils.data.distributed
from PIL import Image

from .batches import mix_seed
from .errors import DatasetError
from .pickle_io import read_capped
from .splits import subset_indices

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_MEMBER_BYTES", "FolderBatches", "FolderIndex",
           "FolderLoaders", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "decode_rgb",
           "eval_transform", "folder_indexes", "folder_splits", "image_folder_loaders", "is_archive",
           "read_image_folder", "scan_split", "train_transform"]

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
    return np.asarray(decode_rgb(data, what, max_pixels), dtype=np.uint8)


def decode_rgb(data: bytes, what: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one encoded image to an RGB PIL image, refusing (before decoding) an image whose
    header announces more than ``max_pixels`` pixels; any failure is one :class:`DatasetError`
    naming ``what``."""
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
                return im.convert("RGB")
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


# ---------------------------------------------------------------------------------------------
# Streaming loaders (ImageNet-style training): images are decoded per batch in DataLoader
# workers, never all held in memory.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("torchvision", "dali")


@dataclass(frozen=True)
class FolderIndex:
    """The file list of one split: paths packed into one byte buffer (no per-file Python
    objects, so forked workers share it without copying) and int64 labels."""

    folder: str
    blob: np.ndarray     # uint8, UTF-8 paths back to back
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray   # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        """The path of file ``i``."""
        return bytes(self.blob[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8", "surrogateescape")

    def subset(self, keep: np.ndarray) -> "FolderIndex":
        """The files at the (sorted) positions ``keep``."""
        paths = [self.path(int(i)) for i in keep]
        return _pack(self.folder, paths, self.labels[keep])


def _pack(folder: str, paths: List[str], labels) -> FolderIndex:
    encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return FolderIndex(folder, blob, offsets, np.asarray(labels, dtype=np.int64))


def _class_folders(split_dir: Path) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"{split_dir}: cannot list the class folders ({e})") from e


def scan_split(split_dir: Path, classes: Sequence[str]) -> FolderIndex:
    """Every image under ``split_dir/<class>/`` (recursively, sorted), labelled by the position
    of its class in ``classes``."""
    paths: List[str] = []
    labels: List[int] = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, onerror=_raise_walk_error):
            dirnames.sort()
            for f in sorted(filenames):
                if _is_image(f):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not paths:
        raise DatasetError(f"{split_dir}: no images in its class folders (extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return _pack(str(split_dir), paths, labels)


def _raise_walk_error(e: OSError) -> None:
    raise DatasetError(f"{e.filename}: cannot list ({e.strerror})")


def folder_splits(root: PathLike) -> Tuple[List[str], Path, Path]:
    """``(classes, train_dir, eval_dir)`` of an ImageFolder-layout root: ``train/<class>/`` and
    ``val/<class>/`` (``test/<class>/`` when there is no ``val/``), the same class folders in
    both."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected train/<class>/ and val/<class>/ in it)")
    train_dir = root / "train"
    eval_dir = root / "val" if (root / "val").is_dir() or not (root / "test").is_dir() else root / "test"
    for d in (train_dir, eval_dir):
        if not d.is_dir():
            raise DatasetError(f"{d}: no such folder (an image folder holds train/<class>/ and val/<class>/)")
    classes = _class_folders(train_dir)
    if not classes:
        raise DatasetError(f"{train_dir}: no class folders")
    eval_classes = _class_folders(eval_dir)
    if eval_classes != classes:
        missing = sorted(set(classes) - set(eval_classes))
        extra = sorted(set(eval_classes) - set(classes))
        raise DatasetError(f"{eval_dir}: class folders differ from {train_dir} (missing: {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, extra: {extra[:5]}"
                           f"{' ...' if len(extra) > 5 else ''})")
    return classes, train_dir, eval_dir


class _Failure:
    """A batch that could not be made: carries the one-line message to the main process, where
    it is raised as :class:`DatasetError` (an exception raised in a worker would come back with
    the worker's traceback folded into its message)."""

    def __init__(self, message: str):
        self.message = message


class _FolderDataset(torch.utils.data.Dataset):
    """Decodes file ``i`` of a :class:`FolderIndex` (size- and pixel-capped) and applies
    ``transform``. Indexed by ``(i, sample_seed)``: the random transform draws from a generator
    seeded with ``sample_seed``, so a sample's augmentation depends only on (seed, epoch, i),
    not on the number of workers or which worker decodes it."""

    def __init__(self, index: FolderIndex, transform, max_file_bytes: int, max_pixels: int):
        self.index, self.transform = index, transform
        self.max_file_bytes, self.max_pixels = max_file_bytes, max_pixels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        i, sample_seed = item
        path = self.index.path(i)
        try:
            try:
                with open(path, "rb") as f:
                    data = read_capped(f, self.max_file_bytes, path, os.fstat(f.fileno()).st_size)
            except OSError as e:
                raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
            image = decode_rgb(data, path, self.max_pixels)
            if torch.utils.data.get_worker_info() is None:  # main process: keep its RNG stream
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed)
                    x = self.transform(image)
            else:
                torch.manual_seed(sample_seed)
                x = self.transform(image)
        except DatasetError as e:
            return _Failure(str(e))
        return x, int(self.index.labels[i])


def _collate(samples):
    for s in samples:
        if isinstance(s, _Failure):
            return s
    return torch.utils.data.default_collate(samples)


class _SeededIndices(torch.utils.data.Sampler):
    """Wraps a sampler of indices into ``(index, sample_seed)`` pairs for :class:`_FolderDataset`."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for i in self.sampler:
            yield int(i), mix_seed(self.seed, self.epoch, int(i))

    def __len__(self) -> int:
        return len(self.sampler)


class _ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index from ``rank``, in order, without padding: the ranks' shards
    partition the set exactly, so summed evaluation counts see each image once."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class FolderBatches:
    """Iterable of ``(images float32 [B, 3, S, S] normalised, labels int64 [B])``; ``len()`` is
    the number of batches per epoch on this rank."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if isinstance(batch, _Failure):
                raise DatasetError(batch.message)
            yield batch


@dataclass
class FolderLoaders:
    """The train and test batch iterables of an image folder, with its class count and sizes
    (``train_size`` / ``test_size``: images in each split after subsetting, all ranks together)."""

    train: Iterable
    test: Iterable
    num_classes: int
    train_size: int
    test_size: int
    classes: List[str]
    _set_epoch: Callable[[int], None]

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s shuffle and augmentation (deterministic in seed and epoch);
        call before iterating ``train`` each epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._set_epoch(epoch)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def train_transform(image_size: int, color_jitter: Sequence[float]):
    """RandomResizedCrop, horizontal flip, ColorJitter, ToTensor and ImageNet normalisation."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ColorJitter(*color_jitter),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(image_size: int, resize: int):
    """Resize (shorter side), CenterCrop, ToTensor and ImageNet normalisation."""
    from torchvision import transforms as T
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder_loaders(root: PathLike, *, batch_size: int, eval_batch_size: int, workers: int = 4,
                         train_images: Optional[int] = None, test_images: Optional[int] = None,
                         image_size: int = 224, resize: int = 256,
                         color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.2), rank: int = 0,
                         world_size: int = 1, seed: int = 0, pin_memory: bool = True,
                         prefetch_factor: int = 2, backend: str = "torchvision",
                         max_file_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> FolderLoaders:
    """Streaming train/test loaders over ``root/train/<class>/`` and ``root/val/<class>/``.

    ``batch_size`` / ``eval_batch_size`` are per rank. The train set is sharded and shuffled
    with :class:`~torch.utils.data.distributed.DistributedSampler` (``seed``; the shuffle and
    the augmentation of each image are fixed by (seed, epoch, image), see
    :meth:`FolderLoaders.set_epoch`); the test set is split into exact, unpadded shards.
    ``train_images`` / ``test_images`` keep a seeded subset of each split. Files are read in
    ``workers`` DataLoader processes (0: in this process), each file capped at
    ``max_file_bytes`` and ``max_image_pixels`` (a bad, corrupt or over-large file raises one
    :class:`DatasetError` naming it). ``backend="dali"`` decodes on the GPU with NVIDIA DALI
    (see :mod:`gaea_nas.data.dali_folder`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                             ("workers", workers, 0), ("image_size", image_size, 1), ("resize", resize, 1),
                             ("world_size", world_size, 1), ("rank", rank, 0), ("seed", seed, 0),
                             ("prefetch_factor", prefetch_factor, 1), ("max_file_bytes", max_file_bytes, 1),
                             ("max_image_pixels", max_image_pixels, 1)):
        _check_int(name, value, low)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    for name, value in (("train_images", train_images), ("test_images", test_images)):
        if value is not None:
            _check_int(name, value, 1)
    if len(color_jitter) != 4 or any(not isinstance(v, (int, float)) or v < 0 for v in color_jitter):
        raise ValueError(f"color_jitter must be 4 numbers >= 0 (brightness, contrast, saturation, hue), "
                         f"got {color_jitter!r}")
    if backend == "dali":
        from .dali_folder import dali_folder_loaders
        return dali_folder_loaders(root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                   workers=workers, train_images=train_images, test_images=test_images,
                                   image_size=image_size, resize=resize, color_jitter=tuple(color_jitter),
                                   rank=rank, world_size=world_size, seed=seed, max_file_bytes=max_file_bytes)

    classes, train_index, test_index = folder_indexes(root, train_images, test_images, seed)
    train_set = _FolderDataset(train_index, train_transform(image_size, color_jitter), max_file_bytes,
                               max_image_pixels)
    test_set = _FolderDataset(test_index, eval_transform(image_size, resize), max_file_bytes, max_image_pixels)
    train_sampler = _SeededIndices(torch.utils.data.distributed.DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed), seed)
    test_sampler = _SeededIndices(_ShardSampler(len(test_set), rank, world_size), seed)
    kw: Dict[str, object] = dict(num_workers=workers, collate_fn=_collate,
                                 pin_memory=pin_memory and torch.cuda.is_available())
    if workers > 0:  # persistent: the worker start-up (imports, forking) is paid once, not per epoch
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=True)
    train = torch.utils.data.DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, **kw)
    test = torch.utils.data.DataLoader(test_set, batch_size=eval_batch_size, sampler=test_sampler, **kw)
    return FolderLoaders(FolderBatches(train), FolderBatches(test), len(classes), len(train_index),
                         len(test_index), classes, train_sampler.set_epoch)


def folder_indexes(root: PathLike, train_images: Optional[int], test_images: Optional[int],
                   seed: int) -> Tuple[List[str], FolderIndex, FolderIndex]:
    """``(classes, train index, test index)`` of an image folder, each split reduced to a seeded
    subset of ``train_images`` / ``test_images`` files when given."""
    classes, train_dir, eval_dir = folder_splits(root)
    indexes = []
    for split_dir, count, salt in ((train_dir, train_images, 1), (eval_dir, test_images, 2)):
        index = scan_split(split_dir, classes)
        if count is not None and count < len(index):
            index = index.subset(subset_indices(len(index), count, mix_seed(seed, salt)).numpy())
        indexes.append(index)
    return classes, indexes[0], indexes[1]
