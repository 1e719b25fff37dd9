"""Crash-safe checkpoints: atomic writes (:mod:`.files`), clear errors on bad files, RNG
state capture, and the run folder's checkpointer."""
from __future__ import annotations

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
    "load_checkpoint",
    "restore_rng_state",
]

from .files import TMP_SUFFIX, atomic_write

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not loadable; the message names it."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`~gaea_nas.runtime.files.atomic_write`).
    Returns the path written."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Load a checkpoint written by :func:`atomic_save`.

    Raises :class:`CheckpointError` naming the file when it is missing, empty, truncated or
    otherwise unreadable. ``weights_only=True`` (the default) refuses arbitrary pickled code;
    everything this module writes (including RNG states) loads that way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises RuntimeError / EOFError / UnpicklingError / ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


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


def restore_rng_state(state: Dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Restore a :func:`capture_rng_state` snapshot, so the next draws of every generator are
    bitwise those that followed the capture. ``generators`` must match the captured ones in
    number and order. CUDA states are restored when CUDA is available (to as many devices as
    both the snapshot and this machine have)."""
    saved_gens = state.get("generators", [])
    if len(saved_gens) != len(generators):
        raise ValueError(
            f"restore_rng_state: snapshot holds {len(saved_gens)} torch.Generator state(s), "
            f"but {len(generators)} generator(s) were given"
        )
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
        """Delete leftover ``.<name>.*.tmp`` files of interrupted writes; returns how many."""
        n = 0
        for p in self.run_dir.glob(f".*.pt.*{TMP_SUFFIX}"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n
