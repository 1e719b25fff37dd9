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
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..data import Dataset, load_dataset, search_streams
from ..runtime import (
    Checkpointer,
    Distributed,
    FaultInjector,
    MetricsLog,
    RunLog,
    StopRequest,
    capture_rng_state,
    device_name,
    init_distributed,
    load_checkpoint,
    progress_bar,
    resolve_device,
    restore_rng_state,
    seed_everything,
    wrap_ddp,
    write_json,
)
from ..spaces import SuperNet, supernet_class
from .builders import build_arch_optimizer, build_supernet, build_weight_optimizer
from .config import SearchConfig, release_notes
from .step import NonFiniteLossError, search_iteration

__all__ = ["RunOptions", "SearchError", "SearchInterrupted", "arch_summary", "load_run", "resolve_device", "run_search"]

CHECKPOINT_FORMAT = 1
AMP_DTYPES = {"bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# torch.compile backend of --compile (inductor); tests use "aot_eager" to skip code generation
COMPILE_BACKEND_ENV = "GAEA_COMPILE_BACKEND"


class SearchError(RuntimeError):
    """The search cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


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
    if table is not None:
        log(f"results table: {table.path}")
    return table


_SUMS = ("train_loss", "train_acc", "search_loss", "search_acc")


def _empty_sums() -> Dict[str, float]:
    return {**{k: 0.0 for k in _SUMS}, "train_steps": 0.0, "search_steps": 0.0, "seconds": 0.0}


# ---------------------------------------------------------------------------------------
# the search


def run_search(cfg: SearchConfig, opts: RunOptions, run_dir, *, resume: bool = False,
               dataset: Optional[Dataset] = None, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or, with ``resume``, continue) the search ``cfg`` into ``run_dir``; returns the
    result dict also written to ``result.json``.

    Raises :class:`SearchInterrupted` after checkpointing on SIGINT/SIGTERM,
    :class:`SearchError` on a non-finite loss, ``DatasetError`` / ``FileNotFoundError`` /
    :class:`~gaea_nas.runtime.checkpoint.CheckpointError` for missing or corrupt inputs and
    ``ValueError`` for bad options."""
    run_dir = Path(run_dir)
    device = resolve_device(opts.device)
    ctx = init_distributed(device.type)
    try:
        return _Search(cfg, opts, run_dir, device, ctx, resume, dataset, echo).run()
    finally:
        ctx.close()


class _Search:
    def __init__(self, cfg: SearchConfig, opts: RunOptions, run_dir: Path, device: torch.device,
                 ctx: Distributed, resume: bool, dataset: Optional[Dataset], echo):
        self.cfg, self.opts, self.run_dir, self.ctx = cfg, opts, run_dir, ctx
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        self.log = RunLog(run_dir, ctx.is_main, echo)
        self.checkpointer = Checkpointer(run_dir, opts.keep_epoch_checkpoints) if ctx.is_main else None
        self.state = None
        if resume:
            self.state = load_checkpoint(run_dir / Checkpointer.LAST, map_location="cpu")
            saved = self.state.get("config")
            if saved != cfg.to_dict():
                raise ValueError(f"{run_dir}: the checkpoint was written by a different search config; "
                                 "resume with the run folder's own config.json")
        seed_everything(cfg.seed, cfg.deterministic)
        self.dataset = dataset if dataset is not None else load_dataset(cfg.dataset, root=opts.data_root)
        self.table = _load_table(cfg, opts, self.log)

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

    def _restore(self) -> None:
        s = self.state
        if s.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.run_dir}: checkpoint format {s.get('format')!r}, expected {CHECKPOINT_FORMAT}")
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
            "wall_time_s": self._wall(),
        }
        self._last_save = time.monotonic()
        if self.checkpointer is None:
            return None
        epoch_done = self.epoch if self.position == 0 else None
        return self.checkpointer.save(state, epoch=epoch_done)

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
            self._restore()
            self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.position}")
        else:
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
                                                      "notes": release_notes(cfg), "torch": torch.__version__})
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
    """``config.json`` of a run folder as ``{'config': SearchConfig, 'run': RunOptions, ...}``."""
    path = Path(run_dir) / "config.json"
    with open(path) as f:
        d = json.load(f)
    return {**d, "config": SearchConfig.from_dict(d["config"]), "run": RunOptions.from_dict(d["run"])}
