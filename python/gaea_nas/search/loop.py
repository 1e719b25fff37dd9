"""The search loop: epochs of :func:`~gaea_nas.search.step.search_iteration` over seeded
device-resident batch streams, with per-epoch metrics, atomic checkpoints, clean stops on
SIGINT/SIGTERM, exact resume and data-parallel runs (docs/method.md §2, §5 and §7). It knows
supernets only through the :class:`~gaea_nas.spaces.supernet.SuperNet` protocol.

A run folder holds ``config.json`` (the search config, the run options, the release notes),
``metrics.jsonl`` (one JSON line per finished epoch), ``log.txt``, ``last.pt`` (the latest
complete checkpoint) and, when done, ``result.json``. Everything that decides the numbers is
in the checkpoint (model, both optimisers, the two streams' positions, every RNG, the
partial-epoch sums), so a run stopped anywhere - even by SIGKILL - and resumed from its last
checkpoint ends bitwise where the uninterrupted run ends (same device and thread count).

What is refused, before anything is created or restored: options out of range (threads above
:func:`~gaea_nas.runtime.devices.max_threads`, seeds outside ``[0, 2**63)``, a cutout larger
than the images); checkpoints that fail their content hash or whose fields (keys, types,
shapes, ranges) do not fit this search; a dataset whose content differs from the one the
checkpoint was written with (unless ``allow_data_change``). A new search that fails before its
first checkpoint leaves no run folder behind; a resumed one leaves its folder as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..data import Dataset, DatasetError, load_dataset, search_streams
from ..data.cache import source_fingerprint
from ..runtime import (
    CheckpointError,
    Checkpointer,
    Distributed,
    FaultInjector,
    MetricsLog,
    RunLog,
    StopRequest,
    capture_rng_state,
    check_rng_state,
    check_seed,
    device_name,
    load_checkpoint,
    max_threads,
    place_rank,
    progress_bar,
    resolve_device,
    restore_rng_state,
    run_distributed,
    seed_everything,
    top_new_folder,
    wrap_ddp,
    write_json,
)
from ..spaces import SuperNet, supernet_class
from .builders import build_arch_optimizer, build_supernet, build_weight_optimizer
from .config import SearchConfig, release_notes
from .step import NonFiniteLossError, search_iteration

__all__ = ["DataChangedError", "OptionError", "RunFolderError", "RunOptions", "SearchError", "SearchInterrupted",
           "arch_summary", "dataset_fingerprint", "load_run", "resolve_device", "run_search"]

CHECKPOINT_FORMAT = 2
AMP_DTYPES = {"bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# torch.compile backend of --compile (inductor); tests use "aot_eager" to skip code generation
COMPILE_BACKEND_ENV = "GAEA_COMPILE_BACKEND"


class SearchError(RuntimeError):
    """The search cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class DataChangedError(SearchError):
    """The dataset's content differs from the one the checkpoint was written with."""


class OptionError(ValueError):
    """An option that is out of range for this machine or this dataset (a usage error)."""


class RunFolderError(RuntimeError):
    """A run folder's ``config.json`` is missing, unreadable or malformed; the message names it."""


class SearchInterrupted(Exception):
    """A SIGINT/SIGTERM stopped the search after saving a checkpoint; ``--resume`` continues."""

    def __init__(self, signum: int, epoch: int, position: int, checkpoint: Optional[Path]):
        self.signum, self.epoch, self.position, self.checkpoint = signum, epoch, position, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at epoch {epoch + 1}, step {position}; checkpoint {checkpoint}")


@dataclass(frozen=True)
class RunOptions:
    """How to run a search (things that do not change what is searched, except
    ``train_images`` and ``cutout``, which choose the data). Saved in ``config.json``."""

    data_root: Optional[str] = None          # folder of named datasets (cifar10, ...)
    train_images: Optional[int] = None        # seeded subset of the training set
    cutout: int = 0
    device: str = "auto"                      # auto | cpu | cuda | cuda:N
    amp: Optional[str] = None                 # None | "bf16"
    channels_last: bool = False
    compile: Optional[str] = None             # None | "default" | "reduce-overhead" | "max-autotune"
    table: Optional[str] = None               # NAS-Bench-201 table path (default: found by NB201Table)
    checkpoint_every_steps: int = 0           # also checkpoint mid-epoch every N steps (0: off)
    checkpoint_minutes: float = 10.0          # ... and at least this often (0: off)
    keep_epoch_checkpoints: bool = False
    progress: bool = True
    threads: Optional[int] = None
    max_file_bytes: Optional[int] = None      # raise the data loaders' per-file caps (None: defaults)
    max_image_pixels: Optional[int] = None    # raise the image decoder's pixel cap (None: default)

    def __post_init__(self):
        if self.train_images is not None and (isinstance(self.train_images, bool) or int(self.train_images) < 2):
            raise ValueError(f"RunOptions.train_images: must be an int >= 2 or None, got {self.train_images!r}")
        if self.amp not in (None, *AMP_DTYPES):
            raise ValueError(f"RunOptions.amp: must be one of {[None, *AMP_DTYPES]}, got {self.amp!r}")
        if self.compile not in (None, *COMPILE_MODES):
            raise ValueError(f"RunOptions.compile: must be one of {[None, *COMPILE_MODES]}, got {self.compile!r}")
        for name in ("cutout", "checkpoint_every_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RunOptions.{name}: must be >= 0, got {getattr(self, name)!r}")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"RunOptions.checkpoint_minutes: must be >= 0, got {self.checkpoint_minutes!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"RunOptions.threads: must be >= 1, got {self.threads!r}")
        for name in ("max_file_bytes", "max_image_pixels"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"RunOptions.{name}: must be a positive int or None, got {v!r}")

    def data_limits(self) -> Dict[str, int]:
        """The loaders' size caps these options raise (``load_dataset`` keyword arguments)."""
        limits = {}
        if self.max_file_bytes is not None:
            limits["max_batch_bytes"] = limits["max_member_bytes"] = self.max_file_bytes
        if self.max_image_pixels is not None:
            limits["max_image_pixels"] = self.max_image_pixels
        return limits

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"RunOptions: unknown field(s) {unknown}")
        return cls(**d)


def check_layout_supported(cfg: SearchConfig, opts: RunOptions, device: torch.device) -> None:
    """Refuse channels_last with partial channels on the CPU: the oneDNN backward of the
    quarter-channel convolutions is pathologically slow there and can corrupt the heap
    (torch 2.14.1; reproduced without any gaea_ext kernel)."""
    if opts.channels_last and device.type == "cpu" and cfg.partial_channels > 1:
        raise ValueError("--channels-last with partial channels (PC-DARTS) is not supported on the CPU: PyTorch's "
                         "oneDNN convolution backward on those channel slices is extremely slow and can crash; "
                         "drop --channels-last or run on CUDA")


# ---------------------------------------------------------------------------------------
# what a run records


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp_min(0)
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def arch_summary(model: SuperNet, exclude_none: bool = False) -> Dict[str, Any]:
    """``{'arch', 'ops', 'arch_weights', 'entropy'}`` of a supernet now: the derived
    architecture as text, the op names, the mixing distributions per cell type (and the edge
    weights when learned) as nested lists, and the mean per-edge entropy of the op
    distributions (nats); with more than one cell type also ``entropy_by_cell``."""
    weights: Dict[str, Any] = {}
    ents = {}
    for name, m in model.arch_cells().items():
        with torch.no_grad():
            p = m.probabilities().detach().double().cpu()
            weights[name] = p.tolist()
            ents[name] = _entropy(p)
            e = m.edge_weights()
            if e is not None:
                weights[f"edges_{name}"] = e.detach().double().cpu().tolist()
    out = {"arch": model.derived_arch(exclude_none=exclude_none), "ops": list(model.op_names),
           "arch_weights": weights, "entropy": float(torch.cat(list(ents.values())).mean())}
    if len(ents) > 1:
        out["entropy_by_cell"] = {n: float(e.mean()) for n, e in ents.items()}
    return out


def _load_table(cfg: SearchConfig, opts: RunOptions, log: Callable[[str], None]):
    try:
        table = supernet_class(cfg.space).lookup_table(opts.table)
    except FileNotFoundError as e:
        if opts.table is not None:
            raise
        log(f"{cfg.space} results table not found; the cells found will not be looked up ({str(e).split('. ')[0]})")
        return None
    except (OSError, ValueError):
        raise
    except Exception as e:  # a reader's unexpected error still names the table, in one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{opts.table or f'the {cfg.space} results table'}: cannot be read "
                         f"({type(e).__name__}: {first})") from e
    if table is not None:
        log(f"results table: {table.path}")
    return table


_SUMS = ("train_loss", "train_acc", "search_loss", "search_acc")


def dataset_fingerprint(dataset: Dataset) -> Dict[str, Any]:
    """What identifies the data a run searched on: ``sha256`` of the decoded images, labels
    and class names (compared on resume), plus the source's path, size and mtime (for people)."""
    h = hashlib.sha256()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        a = getattr(dataset, name)
        h.update(f"{name}{a.dtype}{tuple(a.shape)}|".encode())
        h.update(memoryview(a.tobytes() if not a.flags.c_contiguous else a).cast("B"))
    h.update(json.dumps(list(dataset.classes)).encode())
    source = None
    if dataset.source and Path(dataset.source).exists():
        with contextlib.suppress(OSError):
            source = source_fingerprint(dataset.source)
    return {"sha256": h.hexdigest(), "name": dataset.name, "source": source}


def _check_options(cfg: SearchConfig, opts: RunOptions) -> None:
    """Refuse options out of range for this machine (before anything is loaded or created)."""
    if opts.threads is not None and int(opts.threads) > max_threads():
        raise OptionError(f"--threads {opts.threads}: at most {max_threads()} on this machine "
                          f"({os.cpu_count()} CPUs)")
    try:
        check_seed(cfg.seed)
    except ValueError as e:
        raise OptionError(str(e)) from None


def _check_cutout(opts: RunOptions, dataset: Dataset) -> None:
    h, w = dataset.image_size
    if opts.cutout > min(h, w):
        raise OptionError(f"--cutout {opts.cutout} is larger than the {h}x{w} images of {dataset.name}")


def _empty_sums() -> Dict[str, float]:
    return {**{k: 0.0 for k in _SUMS}, "train_steps": 0.0, "search_steps": 0.0, "seconds": 0.0}


# ---------------------------------------------------------------------------------------
# the search


def run_search(cfg: SearchConfig, opts: RunOptions, run_dir, *, resume: bool = False,
               dataset: Optional[Dataset] = None, echo: Callable[[str], None] = print,
               allow_data_change: bool = False) -> Dict[str, Any]:
    """Run (or, with ``resume``, continue) the search ``cfg`` into ``run_dir``; returns the
    result dict also written to ``result.json``.

    Raises :class:`SearchInterrupted` after checkpointing on SIGINT/SIGTERM,
    :class:`SearchError` on a non-finite loss, :class:`DataChangedError` when resuming on a
    dataset whose content changed (unless ``allow_data_change``), ``DatasetError`` /
    ``FileNotFoundError`` / :class:`~gaea_nas.runtime.checkpoint.CheckpointError` /
    ``OSError`` (:class:`~gaea_nas.runtime.files.WriteError`) for missing, corrupt or
    unwritable files, :class:`OptionError` for options out of range and ``ValueError`` for
    other bad options. A new search that fails before its first checkpoint removes its run
    folder (and the folders above it that it created)."""
    run_dir = Path(run_dir)
    _check_options(cfg, opts)
    return run_distributed(opts.device, lambda device, ctx: _Search(cfg, opts, run_dir, device, ctx, resume, dataset,
                                                                    echo, allow_data_change))


class _Search:
    def __init__(self, cfg: SearchConfig, opts: RunOptions, run_dir: Path, device: torch.device,
                 ctx: Distributed, resume: bool, dataset: Optional[Dataset], echo, allow_data_change: bool):
        """Load and check every input; nothing is created or changed on disk here."""
        self.cfg, self.opts, self.run_dir, self.ctx = cfg, opts, run_dir, ctx
        self.allow_data_change = allow_data_change
        self.created: Optional[Path] = None  # the top folder this search created, if any
        self.new_files: List[Path] = []      # the files a new search adds to an existing folder
        self.saved = False                   # whether this search wrote a checkpoint
        self.device = place_rank(device, ctx, opts.threads)
        self.pending_log: List[str] = []
        self.log: Callable[[str], None] = self.pending_log.append  # until the run folder is open
        self.echo = echo
        self.checkpointer: Optional[Checkpointer] = None
        self.last_path = run_dir / Checkpointer.LAST
        self.state = None
        if resume:
            self.state = load_checkpoint(self.last_path, map_location="cpu")
            if not isinstance(self.state, dict):
                raise CheckpointError(f"{self.last_path}: expected a dict of the search state, "
                                      f"got {type(self.state).__name__}")
            if self.state.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{self.last_path}: field format: {self.state.get('format')!r}, "
                                      f"expected {CHECKPOINT_FORMAT}")
            if self.state.get("config") != cfg.to_dict():
                raise CheckpointError(f"{self.last_path}: the checkpoint was written by a different search "
                                      f"config than {run_dir / 'config.json'}")
        seed_everything(cfg.seed, cfg.deterministic)
        self.dataset = dataset if dataset is not None else self._load_dataset()
        _check_cutout(opts, self.dataset)
        self.data = dataset_fingerprint(self.dataset)
        self.table = _load_table(cfg, opts, self.log)

    def _load_dataset(self) -> Dataset:
        cfg = self.cfg
        try:
            return load_dataset(cfg.dataset, root=self.opts.data_root, **self.opts.data_limits())
        except (DatasetError, OSError, ValueError):
            raise
        except Exception as e:  # a loader's unexpected error still names the dataset, in one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise DatasetError(f"{cfg.dataset}: cannot be loaded ({type(e).__name__}: {first})") from e

    def _open_folder(self) -> None:
        """Create the run folder (remembering what this search created) and start logging."""
        if self.ctx.is_main:
            self.created = top_new_folder(self.run_dir)
            self.new_files = [self.run_dir / n for n in ("config.json", "log.txt", MetricsLog.FILE, "result.json")
                              if not (self.run_dir / n).exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.checkpointer = Checkpointer(self.run_dir, self.opts.keep_epoch_checkpoints)
        self.ctx.barrier()
        self.log = RunLog(self.run_dir, self.ctx.is_main, self.echo)
        for line in self.pending_log:
            self.log(line)

    def discard_if_unsaved(self) -> None:
        """After a failure: remove the folders this search created when it wrote no checkpoint
        (an existing folder keeps what it held; temp files are never left)."""
        if not self.ctx.is_main or self.saved or self.state is not None:
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for p in self.new_files:
            with contextlib.suppress(OSError):
                p.unlink()

    # -- set-up ----------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, opts, ctx = self.cfg, self.opts, self.ctx
        check_layout_supported(cfg, opts, self.device)
        self.train_stream, self.search_stream = search_streams(
            self.dataset, cfg.objective, cfg.batch_size, cfg.seed, device=self.device,
            train_portion=cfg.train_portion, train_images=opts.train_images, cutout=opts.cutout,
            channels_last=opts.channels_last, rank=ctx.rank, world_size=ctx.world_size,
            search_fresh_draws=cfg.search_sampling == "with_replacement")
        model = build_supernet(cfg, self.dataset.num_classes).to(self.device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.arch_opt = build_arch_optimizer(cfg, model)
        self.weight_opt = build_weight_optimizer(cfg, model)
        self.weight_model = wrap_ddp(model, ctx, self.device, find_unused=cfg.is_gdas)
        self.arch_model: nn.Module = model
        if opts.compile:
            kw = dict(mode=None if opts.compile == "default" else opts.compile,
                      backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
            self.arch_model = torch.compile(model, **kw)
            self.weight_model = self.arch_model if self.weight_model is model else torch.compile(self.weight_model, **kw)

    def _check_state(self) -> None:
        """Refuse a checkpoint whose keys, types, shapes or ranges do not fit this search, and
        one written on other data (unless allowed): before anything is restored."""
        s, path, cfg = self.state, self.last_path, self.cfg

        def bad(field: str, problem: str):
            raise CheckpointError(f"{path}: field {field}: {problem}")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        need = {"epoch": int, "position": int, "finished": bool, "model": dict, "arch_optimizer": dict,
                "weight_optimizer": dict, "streams": dict, "rng": dict, "metrics": list, "sums": dict,
                "wall_time_s": (int, float), "data": dict}
        for key, kind in need.items():
            if key not in s:
                bad(key, "missing")
            if not isinstance(s[key], kind) or (kind is int and isinstance(s[key], bool)):
                bad(key, f"expected {getattr(kind, '__name__', 'a number')}, got {type(s[key]).__name__}")
        steps = len(self.train_stream)
        epoch, position = s["epoch"], s["position"]
        if not 0 <= epoch <= cfg.epochs:
            bad("epoch", f"{epoch} outside 0..{cfg.epochs}")
        if not 0 <= position < steps or (epoch == cfg.epochs and position):
            bad("position", f"{position} outside 0..{steps - 1 if epoch < cfg.epochs else 0}")
        if not is_num(s["wall_time_s"]) or s["wall_time_s"] < 0:
            bad("wall_time_s", f"expected a finite number >= 0, got {s['wall_time_s']!r}")
        if len(s["metrics"]) != epoch or not all(isinstance(m, dict) for m in s["metrics"]):
            bad("metrics", f"expected {epoch} epoch record(s), got {len(s['metrics'])}")
        if set(s["sums"]) != set(_empty_sums()) or not all(is_num(v) for v in s["sums"].values()):
            bad("sums", f"expected the finite numbers {sorted(_empty_sums())}")
        own = self.model.state_dict()
        if set(s["model"]) != set(own):
            diff = sorted(set(s["model"]) ^ set(own))
            bad("model", f"its parameters differ from this supernet's ({', '.join(diff[:3])}...)")
        for k, t in own.items():
            v = s["model"][k]
            if not torch.is_tensor(v) or v.shape != t.shape or v.dtype != t.dtype:
                got = f"{v.dtype} {tuple(v.shape)}" if torch.is_tensor(v) else type(v).__name__
                bad(f"model.{k}", f"expected {t.dtype} {tuple(t.shape)}, got {got}")
        for name, opt in (("arch_optimizer", self.arch_opt), ("weight_optimizer", self.weight_opt)):
            self._check_optimizer(name, s[name], opt, bad)
        for name, stream in (("train", self.train_stream), ("search", self.search_stream)):
            st = s["streams"].get(name)
            if not isinstance(st, dict):
                bad(f"streams.{name}", "missing")
            for key in ("epoch", "position", "seed"):
                if not is_int(st.get(key)):
                    bad(f"streams.{name}.{key}", f"expected an int, got {st.get(key)!r}")
            if not 0 <= st["epoch"] < 2 ** 62:
                bad(f"streams.{name}.epoch", f"{st['epoch']} out of range")
            if not 0 <= st["position"] < stream.batches_per_epoch:
                bad(f"streams.{name}.position", f"{st['position']} outside 0..{stream.batches_per_epoch - 1}")
            if st["seed"] != stream.seed:
                bad(f"streams.{name}.seed", f"{st['seed']}, this stream has {stream.seed}")
        try:
            check_rng_state(s["rng"])
        except ValueError as e:
            raise CheckpointError(f"{path}: field {e}") from None
        saved = s["data"].get("sha256")
        if not isinstance(saved, str):
            bad("data.sha256", "missing")
        if saved != self.data["sha256"]:
            where = self.dataset.source or self.dataset.name
            if not self.allow_data_change:
                raise DataChangedError(
                    f"{where}: the dataset's content differs from the one {path} was written with "
                    f"(sha256 {self.data['sha256'][:12]}... instead of {saved[:12]}...); pass "
                    "--allow-data-change to resume on it anyway")
            self.log(f"warning: the dataset's content changed since {path} was written (sha256 {saved[:12]}... "
                     f"-> {self.data['sha256'][:12]}...); resuming on it as asked (--allow-data-change)")

    @staticmethod
    def _check_optimizer(name: str, sd: Dict[str, Any], opt: torch.optim.Optimizer, bad) -> None:
        groups, state = sd.get("param_groups"), sd.get("state")
        if not isinstance(groups, list) or not isinstance(state, dict):
            bad(name, "expected 'state' and 'param_groups'")
        if len(groups) != len(opt.param_groups):
            bad(f"{name}.param_groups", f"{len(groups)} group(s), this optimiser has {len(opt.param_groups)}")
        shapes = {}
        for i, (g, own) in enumerate(zip(groups, opt.param_groups)):
            ids = g.get("params") if isinstance(g, dict) else None
            if not isinstance(ids, list) or len(ids) != len(own["params"]):
                bad(f"{name}.param_groups[{i}]", f"expected {len(own['params'])} parameters")
            shapes.update({pid: p.shape for pid, p in zip(ids, own["params"])})
        for pid, entry in state.items():
            if pid not in shapes or not isinstance(entry, dict):
                bad(f"{name}.state", f"entry {pid!r} belongs to no parameter")
            for key, v in entry.items():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape != shapes[pid]:
                    bad(f"{name}.state[{pid}].{key}", f"shape {tuple(v.shape)}, parameter {tuple(shapes[pid])}")

    def _restore(self) -> None:
        s = self.state
        self.model.load_state_dict(s["model"])
        self.arch_opt.load_state_dict(s["arch_optimizer"])
        self.weight_opt.load_state_dict(s["weight_optimizer"])
        self.train_stream.load_state_dict(s["streams"]["train"])
        self.search_stream.load_state_dict(s["streams"]["search"])
        restore_rng_state(s["rng"])
        self.epoch, self.position = int(s["epoch"]), int(s["position"])
        self.metrics = MetricsLog(self.run_dir, self.ctx.is_main, s["metrics"])
        self.sums = dict(s["sums"])
        self.wall_before = float(s["wall_time_s"])

    def _checkpoint(self, finished: bool = False) -> Optional[Path]:
        state = {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "run": self.opts.to_dict(),
            "epoch": self.epoch, "position": self.position, "finished": finished,
            "model": self.model.state_dict(), "arch_optimizer": self.arch_opt.state_dict(),
            "weight_optimizer": self.weight_opt.state_dict(),
            "streams": {"train": self.train_stream.state_dict(), "search": self.search_stream.state_dict()},
            "rng": capture_rng_state(), "metrics": self.metrics.records, "sums": self.sums,
            "wall_time_s": self._wall(), "data": self.data,
        }
        self._last_save = time.monotonic()
        if self.checkpointer is None:
            return None
        epoch_done = self.epoch if self.position == 0 else None
        path = self.checkpointer.save(state, epoch=epoch_done)
        self.saved = True
        return path

    def _wall(self) -> float:
        return self.wall_before + time.monotonic() - self.t0

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        self._build()
        self.epoch, self.position = 0, 0
        self.metrics = MetricsLog(self.run_dir, ctx.is_main)
        self.sums = _empty_sums()
        self.wall_before = 0.0
        if self.state is not None:
            self._check_state()
            self._open_folder()
            self._restore()
            self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.position}")
        else:
            self._open_folder()
            self._start_log()
        self.t0 = self._last_save = time.monotonic()
        self.faults = FaultInjector()
        steps = len(self.train_stream)
        try:
            with StopRequest() as stop:
                while self.epoch < cfg.epochs:
                    self._run_epoch(steps, stop)
        except NonFiniteLossError as e:
            raise SearchError(f"{e} (epoch {self.epoch + 1}, step {self.position}); the last good checkpoint "
                              f"{self.run_dir / Checkpointer.LAST} is kept") from None
        return self._finish()

    def _start_log(self) -> None:
        cfg, opts = self.cfg, self.opts
        if self.ctx.is_main:
            write_json(self.run_dir / "config.json", {"config": cfg.to_dict(), "run": opts.to_dict(),
                                                      "notes": release_notes(cfg), "torch": torch.__version__,
                                                      "data": self.data})
        n_params = sum(p.numel() for p in self.model.weight_parameters())
        self.log(f"search: {cfg.method} on {cfg.space} / {self.dataset.name} ({len(self.train_stream.indices)} "
                 f"weight-step images, {len(self.search_stream.indices)} arch-step images, "
                 f"{self.dataset.num_classes} classes), seed {cfg.seed}, device {device_name(self.device)}"
                 + (f", {self.ctx.world_size} ranks" if self.ctx.enabled else ""))
        self.log(f"supernet: {self.model.describe()}, "
                 f"{n_params / 1e6:.3f} M weights; {len(self.train_stream)} steps/epoch of batch {cfg.batch_size}")
        for line in release_notes(cfg):
            self.log(f"  {line}")

    def _run_epoch(self, steps: int, stop: StopRequest) -> None:
        cfg, opts, ctx = self.cfg, self.opts, self.ctx
        epoch = self.epoch
        lr = cfg.weight_lr(epoch)
        for g in self.weight_opt.param_groups:
            g["lr"] = lr
        tau = cfg.tau(epoch) if cfg.is_gdas else None
        if tau is not None:
            self.model.set_tau(tau)
        update_arch = epoch >= cfg.arch_warmup_epochs
        self.model.train()
        amp = (torch.autocast(self.device.type, dtype=AMP_DTYPES[opts.amp]) if opts.amp
               else contextlib.nullcontext())
        images = cfg.batch_size * ctx.world_size
        bar = progress_bar(steps, self.position, f"epoch {epoch + 1}/{cfg.epochs}", opts.progress and ctx.is_main)
        every, minutes = opts.checkpoint_every_steps, opts.checkpoint_minutes
        with bar:
            while self.position < steps:
                if ctx.any_flag(stop.signum is not None, self.device):
                    path = self._checkpoint()
                    raise SearchInterrupted(stop.signum or signal.SIGTERM, epoch, self.position, path)
                t = time.perf_counter()
                train_batch = self.train_stream.next_batch()
                search_batch = self.search_stream.next_batch() if update_arch else None
                with amp:
                    out = search_iteration(
                        self.model, train_batch, search_batch, self.arch_opt, self.weight_opt,
                        update_arch=update_arch, grad_clip=cfg.grad_clip, arch_grad_clip=cfg.arch_grad_clip,
                        weight_model=self.weight_model, arch_model=self.arch_model,
                        reduce_arch_grads=ctx.mean_grads_ if ctx.enabled else None)
                dt = time.perf_counter() - t
                s = self.sums
                for k in _SUMS:
                    if k in out:
                        s[k] += out[k]
                s["train_steps"] += 1
                s["search_steps"] += 1 if update_arch else 0
                s["seconds"] += dt
                self.position += 1
                self.faults.step_done()
                bar.set_postfix(loss=f"{s['train_loss'] / s['train_steps']:.3f}",
                                acc=f"{s['train_acc'] / s['train_steps']:.3f}",
                                img_s=f"{images * s['train_steps'] / max(s['seconds'], 1e-9):.0f}", refresh=False)
                bar.update(1)
                if self.position < steps and ((every and self.position % every == 0)
                                              or (minutes and time.monotonic() - self._last_save > 60 * minutes)):
                    self._checkpoint()
        self._end_epoch(lr, tau, update_arch)

    def _end_epoch(self, lr: float, tau: Optional[float], update_arch: bool) -> None:
        cfg, ctx = self.cfg, self.ctx
        s = ctx.sum_values(self.sums, self.device)
        n_train, n_search = max(s["train_steps"], 1), max(s["search_steps"], 1)
        summary = arch_summary(self.model, cfg.exclude_none)
        record: Dict[str, Any] = {
            "epoch": self.epoch + 1, "lr": lr, "arch_updated": update_arch,
            "train_loss": s["train_loss"] / n_train, "train_acc": s["train_acc"] / n_train,
            "search_loss": s["search_loss"] / n_search if s["search_steps"] else None,
            "search_acc": s["search_acc"] / n_search if s["search_steps"] else None,
            "images_per_s": self.cfg.batch_size * s["train_steps"] / max(s["seconds"], 1e-9),
            "tau": tau, **summary,
        }
        record["nb201"] = self.table.summary(record["arch"]) if self.table is not None else None
        self.metrics.append(record)
        self.epoch, self.position, self.sums = self.epoch + 1, 0, _empty_sums()
        self._checkpoint()
        nb = record["nb201"]
        left = (cfg.epochs - self.epoch) * (self._wall() - self.wall_before) / max(len(self.metrics.records), 1)
        self.log(f"epoch {record['epoch']:3d}/{cfg.epochs}  train loss {record['train_loss']:.3f} acc "
                 f"{100 * record['train_acc']:.1f}%"
                 + (f"  search loss {record['search_loss']:.3f} acc {100 * record['search_acc']:.1f}%"
                    if record["search_loss"] is not None else "  (architecture frozen)")
                 + f"  entropy {record['entropy']:.3f}  {record['images_per_s']:.0f} img/s"
                 + (f"  tau {tau:.2f}" if tau is not None else "")
                 + (f"  ETA {left / 60:.1f} min" if self.epoch < cfg.epochs else ""))
        self.log(f"           arch {record['arch']}"
                 + (f"  NB201 CIFAR-10 test {nb['cifar10_test']:.2f}%" if nb else ""))

    def _finish(self) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        identical = ctx.identical(self.model.arch_parameters()) if ctx.enabled else None
        last = self.metrics.records[-1] if self.metrics.records else arch_summary(self.model, cfg.exclude_none)
        result = {
            "arch": last["arch"], "ops": last["ops"], "arch_weights": last["arch_weights"], "entropy": last["entropy"],
            "nb201": last.get("nb201") if self.table is not None else None,
            "epochs": cfg.epochs, "wall_time_s": self._wall(), "device": device_name(self.device),
            "seed": cfg.seed, "space": cfg.space, "method": cfg.method, "objective": cfg.objective,
            "dataset": self.dataset.name, "train_images": len(self.train_stream.indices),
            "world_size": ctx.world_size, "arch_identical_across_ranks": identical,
            "final": {k: last.get(k) for k in ("train_loss", "train_acc", "search_loss", "search_acc")},
        }
        if ctx.is_main:
            self._checkpoint(finished=True)
            write_json(self.run_dir / "result.json", result)
        self.log(f"done in {result['wall_time_s'] / 60:.1f} min: {result['arch']}")
        nb = result["nb201"]
        if nb:
            self.log(f"NAS-Bench-201 (index {nb['index']}): CIFAR-10 valid {nb['cifar10_valid']:.2f} test "
                     f"{nb['cifar10_test']:.2f} | CIFAR-100 valid {nb['cifar100_valid']:.2f} test "
                     f"{nb['cifar100_test']:.2f} | ImageNet16-120 valid {nb['imagenet16_valid']:.2f} test "
                     f"{nb['imagenet16_test']:.2f}")
        if identical is not None:
            self.log(f"architecture parameters bitwise identical on all {ctx.world_size} ranks: {identical}")
        return result


def load_run(run_dir) -> Dict[str, Any]:
    """``config.json`` of a run folder as ``{'config': SearchConfig, 'run': RunOptions, ...}``;
    :class:`RunFolderError` naming the file when it is missing, unreadable or malformed."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: not a run folder (no config.json)")
    try:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        return {**d, "config": SearchConfig.from_dict(d["config"]), "run": RunOptions.from_dict(d["run"])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise RunFolderError(f"{path}: not a readable run config ({type(e).__name__}: {first})") from e
