"""Reading the pickled batch files of CIFAR and ImageNet16 safely.

The official files are pickles of plain dicts, lists and numpy arrays. They are read with a
restricted unpickler that only allows those types, so a tampered file cannot run code, and
truncated or corrupt files raise :class:`DatasetError` naming the file.
"""
from __future__ import annotations

import pickle
from typing import IO, Any

from .errors import DatasetError

__all__ = ["load_batch_pickle"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"disallowed type {module}.{name} in a data batch file")


def load_batch_pickle(fileobj: IO[bytes], what: str) -> Any:
    """Unpickle one batch file (``encoding='bytes'`` as the official readers do); ``what``
    names the file in error messages."""
    try:
        return _RestrictedUnpickler(fileobj, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, OSError) as e:
        raise DatasetError(f"{what}: corrupt or truncated pickle ({type(e).__name__}: {e}); "
                           "delete it and download it again") from e


def get_key(d: Any, key: str, what: str) -> Any:
    """``d[key]`` for a dict whose keys may be str or bytes."""
    if not isinstance(d, dict):
        raise DatasetError(f"{what}: expected a dict, found {type(d).__name__}")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DatasetError(f"{what}: missing key {key!r} (has {sorted(map(str, d))[:8]})")
