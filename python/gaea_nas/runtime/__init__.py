"""What long runs (searches, and evaluation training) share: atomic file writes, checkpoints
and RNG state, the run folder's logs, clean stops on signals, seeding, devices,
data-parallel helpers (DDP under ``torchrun``) and progress bars."""
from . import checkpoint, devices, distributed, files, progress, run_log, seeding, signals
from .checkpoint import (
    CheckpointError,
    Checkpointer,
    atomic_save,
    capture_rng_state,
    check_rng_state,
    content_hash,
    load_checkpoint,
    restore_rng_state,
)
from .devices import device_name, max_threads, resolve_device
from .distributed import Distributed, init_distributed, place_rank, run_distributed, wrap_ddp
from .files import WriteError, atomic_write, top_new_folder, write_json, write_jsonl
from .progress import progress_bar
from .run_log import MetricsLog, RunLog
from .seeding import check_seed, seed_everything
from .signals import FaultInjector, StopRequest

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "Distributed",
    "FaultInjector",
    "MetricsLog",
    "RunLog",
    "StopRequest",
    "WriteError",
    "atomic_save",
    "atomic_write",
    "capture_rng_state",
    "check_rng_state",
    "check_seed",
    "checkpoint",
    "content_hash",
    "device_name",
    "devices",
    "distributed",
    "files",
    "init_distributed",
    "load_checkpoint",
    "max_threads",
    "place_rank",
    "progress",
    "progress_bar",
    "resolve_device",
    "restore_rng_state",
    "run_distributed",
    "run_log",
    "seed_everything",
    "seeding",
    "signals",
    "top_new_folder",
    "wrap_ddp",
    "write_json",
    "write_jsonl",
]
