"""Atomic file writes: a reader sees the previous complete file or the new complete file, never
a partial one, even after a crash or a power loss.

Every write goes to a temporary file in the destination folder, is flushed and fsync'ed, and
is renamed over the destination (``os.replace`` is atomic on POSIX); the folder is then
fsync'ed so the rename itself is durable. On any error the temporary file is removed and the
destination is left as it was; an ``OSError`` (a full disk, a read-only folder) comes out as
:class:`WriteError`, whose message names the destination.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Union

__all__ = ["TMP_SUFFIX", "WriteError", "atomic_write", "fsync_dir", "top_new_folder", "write_json", "write_jsonl"]

PathLike = Union[str, os.PathLike]
TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written (``errno`` kept, e.g. ``ENOSPC``); the message names it."""

    def __init__(self, path: PathLike, cause: BaseException):
        err = getattr(cause, "errno", None)
        reason = getattr(cause, "strerror", None)
        if not reason:
            reason = str(cause).splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(err, reason, str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


def top_new_folder(folder: PathLike) -> Union[Path, None]:
    """The outermost folder that creating ``folder`` would create (absolute), or None when
    ``folder`` exists already."""
    top = Path(folder).absolute()
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return None if top.exists() else top


def fsync_dir(folder: PathLike) -> None:
    """fsync a directory so a rename in it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO], Any], binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` and move it over ``path``
    atomically (see the module docstring). Creates the folder. Returns the path written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise WriteError(path, e) from e
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(path, e) from e
        raise
    fsync_dir(folder)
    return path


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    def write(f):
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    return atomic_write(path, write, binary=False)


def write_jsonl(path: PathLike, records: Iterable[Any]) -> Path:
    """Write one key-sorted JSON line per record, atomically."""
    def write(f):
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return atomic_write(path, write, binary=False)
