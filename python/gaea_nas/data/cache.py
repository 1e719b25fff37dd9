"""Disk cache of decoded datasets: uint8 arrays in an ``.npz`` (no pickled objects).

The key hashes the source path, its size and mtime (for a folder: every file's relative path,
size and mtime), the loader options and ``FORMAT_VERSION``; a changed source therefore gets a
new file. Files are written atomically (:func:`gaea_nas.runtime.files.atomic_write`), so a
crash never leaves a partial cache entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

from ..runtime.files import atomic_write

__all__ = ["FORMAT_VERSION", "cache_path", "cached_arrays", "default_cache_dir", "source_fingerprint"]

PathLike = Union[str, os.PathLike]
FORMAT_VERSION = 1
_FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "mean", "std")


def default_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """``cache_dir`` if given, else ``$GAEA_DATA_CACHE``, else ``~/.cache/gaea_nas``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GAEA_DATA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gaea_nas"


def source_fingerprint(path: PathLike) -> Dict[str, object]:
    """Identity of a source file or folder: resolved path plus size and mtime of its contents."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = total = 0
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            rel = os.path.relpath(os.path.join(dirpath, f), p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
            total += st.st_size
    return {"path": str(p), "files": count, "size": total, "contents": h.hexdigest()}


def cache_path(kind: str, source: PathLike, options: Dict[str, object], cache_dir: Optional[PathLike] = None) -> Path:
    """The cache file for ``source`` loaded as ``kind`` with ``options``."""
    key = json.dumps({"version": FORMAT_VERSION, "kind": kind, "source": source_fingerprint(source),
                      "options": options}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).name)[:40]
    return default_cache_dir(cache_dir) / f"{kind}-{stem}-{digest}.npz"


def _save(path: Path, arrays: Dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: np.asarray(arrays[k]) for k in _FIELDS}
    payload["classes"] = np.asarray([str(c) for c in arrays["classes"]], dtype=np.str_)
    atomic_write(path, lambda f: np.savez(f, **payload))


def _load(path: Path) -> Dict[str, object]:
    with np.load(path, allow_pickle=False) as z:
        out: Dict[str, object] = {k: z[k] for k in _FIELDS}
    out["classes"] = [str(c) for c in out["classes"]]
    out["mean"] = tuple(float(v) for v in out["mean"])
    out["std"] = tuple(float(v) for v in out["std"])
    return out


def cached_arrays(kind: str, source: PathLike, options: Dict[str, object],
                  build: Callable[[], Dict[str, object]],
                  cache_dir: Optional[PathLike] = None, use_cache: bool = True):
    """Load the decoded arrays of ``source`` from the cache, or ``build()`` and store them.

    Returns ``(arrays, hit)``. An unreadable cache entry is rebuilt; an unwritable cache
    directory only warns.
    """
    if not use_cache:
        return build(), False
    path = cache_path(kind, source, options, cache_dir)
    if path.is_file():
        try:
            return _load(path), True
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            warnings.warn(f"ignoring unreadable data cache {path} ({e}); rebuilding it")
    arrays = build()
    try:
        _save(path, arrays)
    except OSError as e:
        warnings.warn(f"could not write the data cache {path} ({e}); continuing without it")
    return arrays, False
