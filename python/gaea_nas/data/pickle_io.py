"""Reading the pickled batch files of CIFAR and ImageNet16 safely and with bounded memory.

The official files are pickles of plain dicts, lists, bytes, ints and numeric numpy arrays.
They are read with a restricted unpickler that admits only the globals those files use
(``numpy ... _reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, and for files re-pickled by
Python 3: ``_codecs.encode``, numpy's ``scalar`` and protocol-5 ``_frombuffer``), each
wrapped so that its arguments are checked before anything is allocated:

* arrays are only numeric (no object, string, void or structured dtypes) and their byte size
  must match the raw data actually present in the file;
* the file may not exceed ``max_bytes``, and the bytes every constructor allocates (arrays,
  byte strings) are counted against a second budget of ``max_bytes``, so a small crafted file
  cannot make the reader allocate more than ``max_bytes`` plus a small multiple of the file
  size (the pickle's own lists and strings).

A tampered file therefore cannot run code or exhaust memory; an over-large, truncated or
corrupt file raises :class:`DatasetError` naming the file.
"""
from __future__ import annotations

import functools
import io
import pickle
import reprlib
import struct
from typing import IO, Any, Optional

import numpy as np

from .errors import DatasetError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

__all__ = ["ALLOWED_DTYPES", "MiB", "get_key", "load_batch_pickle", "read_capped"]

MiB = 1 << 20
# numeric dtypes a batch file may hold (data is uint8; labels, means and the like are ints / floats)
ALLOWED_DTYPES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"})
_NDARRAY = object()  # stands in for numpy.ndarray: only valid as _reconstruct's first argument


class _Refused(pickle.UnpicklingError):
    pass


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxtuple, _repr.maxstring, _repr.maxother = 3, 8, 40, 40
_short = _repr.repr  # bounded repr of file-controlled objects in messages


def _check_dtype(dt: Any) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f"disallowed array dtype {_short(dt)} (only numeric arrays)")
    return dt


def _check_shape(shape: Any) -> tuple:
    if not isinstance(shape, tuple) or len(shape) > 8 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape):
        raise _Refused(f"bad array shape {_short(shape)}")
    return shape


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fileobj: IO[bytes], max_bytes: int):
        super().__init__(fileobj, encoding="bytes")
        self.left = max_bytes

    def spend(self, n: int, what: str) -> None:
        if n > self.left:
            raise _Refused(f"{what} of {n} bytes exceeds the size cap (max_bytes)")
        self.left -= n

    def find_class(self, module: str, name: str) -> Any:
        key = (module.replace("numpy._core", "numpy.core"), name)
        if key == ("numpy", "ndarray"):
            return _NDARRAY
        fn = _GLOBALS.get(key)
        if fn is None:
            raise _Refused(f"disallowed type {module}.{name} in a data batch file")
        return functools.partial(fn, self)

    def load_build(self) -> None:
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, np.ndarray):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise _Refused("bad array state")
            shape, dt, _fortran, raw = state[-4:]
            _check_shape(shape)
            _check_dtype(dt)
            if not isinstance(raw, (bytes, bytearray)):
                raise _Refused("array data is not raw bytes")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dt.itemsize
            if nbytes != len(raw):
                raise _Refused(f"array of shape {shape} needs {nbytes} bytes, the file holds {len(raw)}")
            self.spend(nbytes, "array")
        elif isinstance(inst, np.dtype):
            if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[2:5] != (None, None, None)
                    or state[5:7] != (-1, -1)):
                raise _Refused("disallowed dtype state")
        else:
            raise _Refused(f"disallowed state for {type(inst).__name__}")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build

    # PERSID/BINPERSID, EXT*: refused by the base class / find_class.


def _reconstruct(u: _RestrictedUnpickler, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY or _check_shape(shape) != (0,) or dtype not in (b"b", "b"):
        raise _Refused("disallowed _reconstruct arguments")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _dtype(u: _RestrictedUnpickler, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if spec not in ALLOWED_DTYPES:
        raise _Refused(f"disallowed array dtype {_short(spec)} (only numeric arrays)")
    return np.dtype(spec, bool(align), bool(copy))


def _scalar(u: _RestrictedUnpickler, dt: Any, raw: Any = None) -> Any:
    _check_dtype(dt)
    if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        raise _Refused("bad numpy scalar")
    return _multiarray.scalar(dt, raw)


def _frombuffer(u: _RestrictedUnpickler, buf: Any, dt: Any, shape: Any, order: Any = "C") -> np.ndarray:
    _check_dtype(dt)
    _check_shape(shape)
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F", b"C", b"F"):
        raise _Refused("bad _frombuffer arguments")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dt.itemsize
    if nbytes != len(buf):
        raise _Refused(f"array of shape {shape} needs {nbytes} bytes, the file holds {len(buf)}")
    u.spend(nbytes, "array")
    return _numeric._frombuffer(buf, dt, shape, order.decode() if isinstance(order, bytes) else order)


def _encode(u: _RestrictedUnpickler, obj: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("disallowed _codecs.encode arguments")
    u.spend(len(obj), "byte string")
    return obj.encode("latin1")


_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
}


def read_capped(fileobj: IO[bytes], cap: int, what: str, size: Optional[int] = None) -> bytes:
    """Read a whole file or tar member, refusing it when ``size`` (from the file system or the
    tar header) or the data actually read exceeds ``cap`` bytes; reads at most ``cap + 1``."""
    if size is not None and size > cap:
        raise DatasetError(f"{what}: {size} bytes exceeds the size cap of {cap} bytes; "
                           "raise the cap if the file is genuine")
    # a reader may allocate all it is asked for at once: ask for the announced size, then chunks
    chunks = [fileobj.read(min(max(size, 0), cap) + 1)] if size is not None else []
    got = sum(map(len, chunks))
    while got <= cap:
        chunk = fileobj.read(min(1 << 20, cap + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > cap:
        raise DatasetError(f"{what}: more than the size cap of {cap} bytes; raise the cap if the file is genuine")
    return data


def load_batch_pickle(fileobj: IO[bytes], what: str, max_bytes: int = 256 * MiB,
                      size: Optional[int] = None) -> Any:
    """Unpickle one batch file (``encoding='bytes'`` as the official readers do).

    ``what`` names the file in error messages. ``max_bytes`` caps both the file size and the
    bytes the unpickler may allocate for arrays and byte strings (the callers derive it from
    the format; see :func:`gaea_nas.data.cifar.read_cifar`); ``size`` is the size announced by
    the file system or tar header, checked before reading."""
    data = read_capped(fileobj, max_bytes, what, size)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), max_bytes).load()
    except _Refused as e:
        raise DatasetError(f"{what}: {e}; not an official batch file") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, OSError, OverflowError, RecursionError, MemoryError, struct.error) as e:
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
