"""Crash-safe checkpoints: atomic writes (:mod:`.files`), a content hash verified on every
load, clear errors on bad files, RNG state capture and checks, and the run folder's
checkpointer.

A checkpoint file is ``torch.save({"content_sha256": HEX, "payload": OBJ})``: the hash covers
every tensor's dtype, shape and bytes and every other value of ``OBJ`` (see
:func:`content_hash`), so a flipped bit anywhere in the data is refused on load instead of
silently resuming from different numbers."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "atomic_save",
    "capture_rng_state",
    "check_rng_state",
    "content_hash",
    "load_checkpoint",
    "restore_rng_state",
]

from .files import TMP_SUFFIX, WriteError, atomic_write

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not loadable; the message names it."""


HASH_KEY, PAYLOAD_KEY = "content_sha256", "payload"


def _feed(h, x: Any) -> None:
    if torch.is_tensor(x):
        t = x.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(x, dict):
        h.update(f"D{len(x)}|".encode())
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):  # torch.load may give lists where tuples were saved
        h.update(f"L{len(x)}|".encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, str):
        h.update(f"S{len(x)}:{x}|".encode())
    elif x is None or isinstance(x, (bool, int, float)):
        h.update(f"{type(x).__name__}:{x!r}|".encode())
    else:
        h.update(f"O{type(x).__qualname__}:{x!r}|".encode())


def content_hash(obj: Any) -> str:
    """sha256 (hex) of ``obj``: every tensor's dtype, shape and bytes, and every other value,
    in order; the same before :func:`torch.save` and after :func:`torch.load`."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` ``obj`` with its :func:`content_hash` to ``path`` atomically
    (:func:`~gaea_nas.runtime.files.atomic_write`). Returns the path written.

    A failed write (a full disk...) leaves the previous file and no temporary file, and raises
    :class:`~gaea_nas.runtime.files.WriteError` (an ``OSError``) or :class:`CheckpointError`
    naming ``path``."""
    wrapped = {HASH_KEY: content_hash(obj), PAYLOAD_KEY: obj}
    try:
        return atomic_write(path, lambda f: torch.save(wrapped, f))
    except (WriteError, CheckpointError):
        raise
    except RuntimeError as e:  # torch's writer wraps I/O errors (ENOSPC...) in RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot write checkpoint {path}: {first}") from e


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Load a checkpoint written by :func:`atomic_save` and verify its content hash.

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated,
    unreadable, carries no content hash or fails it. ``weights_only=True`` (the default)
    refuses arbitrary pickled code; everything this module writes (including RNG states)
    loads that way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        wrapped = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises RuntimeError / EOFError / UnpicklingError / ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not (isinstance(wrapped, dict) and set(wrapped) == {HASH_KEY, PAYLOAD_KEY}
            and isinstance(wrapped[HASH_KEY], str)):
        raise CheckpointError(f"checkpoint {path} carries no content hash: not written by gaea_nas "
                              "(or by a version before checkpoints were hashed)")
    payload = wrapped[PAYLOAD_KEY]
    try:
        actual = content_hash(payload)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: cannot hash its content ({type(e).__name__})") from e
    if actual != wrapped[HASH_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its sha256 "
                              f"({actual[:12]}... instead of {wrapped[HASH_KEY][:12]}...)")
    return payload


# ---------------------------------------------------------------------------------------
# RNG state


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def capture_rng_state(generators: Sequence[torch.Generator] = ()) -> Dict[str, Any]:
    """Snapshot every RNG a search uses: python ``random``, numpy's global RNG, torch CPU,
    every CUDA device (when available) and the given ``torch.Generator`` objects (in order).
    Only tensors, ints, floats, strings and tuples/lists: loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()] if _cuda_ready() else [],
        "generators": [g.get_state() for g in generators],
    }
    return state


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _byte_tensor(x: Any, numel: Optional[int] = None) -> bool:
    return torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 1 and (numel is None or x.numel() == numel)


def check_rng_state(state: Any, generators: int = 0) -> None:
    """Raise ``ValueError`` naming the first field of ``state`` that is not what
    :func:`capture_rng_state` writes (``generators``: how many generator states it must
    hold); nothing is changed."""
    if not isinstance(state, dict):
        raise ValueError(f"rng: expected a dict, got {type(state).__name__}")
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise ValueError(f"rng.{key}: missing")
    py = state["python"]
    if not (isinstance(py, (tuple, list)) and len(py) == 3 and _is_int(py[0])
            and isinstance(py[1], (tuple, list)) and len(py[1]) == 625 and all(_is_int(v) for v in py[1])
            and (py[2] is None or isinstance(py[2], float))):
        raise ValueError("rng.python: not a random.getstate() state")
    npst = state["numpy"]
    if not isinstance(npst, dict):
        raise ValueError("rng.numpy: expected a dict")
    keys = npst.get("keys")
    if npst.get("kind") != "MT19937" or not (torch.is_tensor(keys) and keys.dtype == torch.int64
                                            and tuple(keys.shape) == (624,)):
        raise ValueError("rng.numpy: expected an MT19937 state with 624 keys")
    if not (_is_int(npst.get("pos")) and 0 <= npst["pos"] <= 624):
        raise ValueError(f"rng.numpy.pos: expected 0..624, got {npst.get('pos')!r}")
    if npst.get("has_gauss") not in (0, 1) or not isinstance(npst.get("cached_gaussian"), float):
        raise ValueError("rng.numpy: has_gauss / cached_gaussian missing or of the wrong type")
    if not _byte_tensor(state["torch"], torch.get_rng_state().numel()):
        raise ValueError("rng.torch: expected a uint8 tensor of torch.get_rng_state()'s size")
    cuda = state.get("cuda", [])
    if not (isinstance(cuda, (list, tuple)) and all(_byte_tensor(c) for c in cuda)):
        raise ValueError("rng.cuda: expected a list of uint8 tensors")
    gens = state.get("generators", [])
    if not (isinstance(gens, (list, tuple)) and all(_byte_tensor(g) for g in gens)):
        raise ValueError("rng.generators: expected a list of uint8 tensors")
    if len(gens) != generators:
        raise ValueError(f"rng.generators: snapshot holds {len(gens)} torch.Generator state(s), "
                         f"but {generators} generator(s) were given")


def restore_rng_state(state: Dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Restore a :func:`capture_rng_state` snapshot, so the next draws of every generator are
    bitwise those that followed the capture. ``generators`` must match the captured ones in
    number and order. CUDA states are restored when CUDA is available (to as many devices as
    both the snapshot and this machine have). The snapshot is checked first
    (:func:`check_rng_state`): a malformed one raises ``ValueError`` and changes nothing."""
    check_rng_state(state, len(generators))
    saved_gens = state.get("generators", [])
    py = state["python"]
    # torch.load may give lists where tuples were saved; random.setstate wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((
        npst["kind"],
        np.asarray(npst["keys"].numpy() if torch.is_tensor(npst["keys"]) else npst["keys"], dtype=np.uint32),
        int(npst["pos"]),
        int(npst["has_gauss"]),
        float(npst["cached_gaussian"]),
    ))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and _cuda_ready():
        for i in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
    for g, s in zip(generators, saved_gens):
        g.set_state(s.cpu())


# ---------------------------------------------------------------------------------------
# Run-folder checkpointer


class Checkpointer:
    """Keeps ``last.pt`` (and, with ``keep_epochs=True``, ``epoch_XXX.pt``) in a run folder.

    Every write is atomic, so ``last.pt`` is always the last *complete* checkpoint. Stale
    temp files left by a killed writer are removed when the checkpointer is created."""

    LAST = "last.pt"

    def __init__(self, run_dir: PathLike, keep_epochs: bool = False):
        self.run_dir = Path(run_dir)
        self.keep_epochs = bool(keep_epochs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temp_files()

    @property
    def last_path(self) -> Path:
        return self.run_dir / self.LAST

    def epoch_path(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{int(epoch):03d}.pt"

    def exists(self) -> bool:
        return self.last_path.is_file()

    def save(self, state: Any, epoch: Optional[int] = None) -> Path:
        """Write ``state`` to ``last.pt`` (and ``epoch_XXX.pt`` when keeping epochs and
        ``epoch`` is given). Returns the ``last.pt`` path."""
        if self.keep_epochs and epoch is not None:
            atomic_save(state, self.epoch_path(epoch))
        return atomic_save(state, self.last_path)

    def load(self, map_location: Any = "cpu", weights_only: bool = True) -> Any:
        """Load ``last.pt``; :class:`CheckpointError` when missing or corrupt."""
        return load_checkpoint(self.last_path, map_location=map_location, weights_only=weights_only)

    def epoch_checkpoints(self) -> List[Path]:
        """The kept ``epoch_XXX.pt`` files, oldest first."""
        return sorted(self.run_dir.glob("epoch_*.pt"))

    def remove_stale_temp_files(self) -> int:
        """Delete leftover ``.<name>.*.tmp`` files of interrupted atomic writes (checkpoints,
        ``config.json``, ``metrics.jsonl``...); returns how many."""
        n = 0
        for p in self.run_dir.glob(f".*.*{TMP_SUFFIX}"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n
