"""The training loop of ``gaea train``: a discrete cell trained from scratch under a published
protocol (docs/training.md), with per-epoch evaluation on the test set, atomic checkpoints,
clean stops on SIGINT/SIGTERM, exact resume and data-parallel runs. It shares the search's
machinery (:mod:`gaea_nas.runtime`): checkpoints, run logs, signals, seeding, devices, DDP.

A run folder holds ``config.json`` (the resolved :class:`TrainConfig` and :class:`TrainOptions`),
``metrics.jsonl`` (one JSON line per epoch), ``log.txt``, ``last.pt`` (the latest complete
checkpoint), ``tensorboard/`` with ``--tensorboard`` and, when done, ``result.json``. The
checkpoint holds everything that decides the numbers (weights, optimiser, EMA, every RNG,
the epoch and step, the partial-epoch sums), so a CPU run killed anywhere - even by SIGKILL -
and resumed ends bitwise where the uninterrupted run ends (same device and thread count).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..costs import count_macs, count_parameters
from ..data import DatasetError, load_dataset, mix_seed
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
    device_name,
    load_checkpoint,
    max_threads,
    place_rank,
    progress_bar,
    restore_rng_state,
    run_distributed,
    seed_everything,
    top_new_folder,
    wrap_ddp,
    write_json,
)
from ..search.loop import DataChangedError, OptionError, dataset_fingerprint
from ..search.step import NonFiniteLossError
from ..spaces.darts.networks import NetworkCIFAR, NetworkImageNet
from ..spaces.nb201.network import NB201Network
from .batches import DeviceTrainBatches, FolderTrainBatches
from .config import TrainConfig, TrainOptions
from .protocols import PROTOCOL_SOURCES

__all__ = ["TrainError", "TrainInterrupted", "build_network", "run_train"]

CHECKPOINT_FORMAT = 1
# torch.compile backend of --compile (inductor); tests use "aot_eager" to skip code generation
COMPILE_BACKEND_ENV = "GAEA_COMPILE_BACKEND"
_SUMS = ("loss", "correct", "images", "seconds")


class TrainError(RuntimeError):
    """The run cannot go on (a non-finite loss); the last good checkpoint is kept."""


class TrainInterrupted(Exception):
    """A SIGINT/SIGTERM stopped the run after saving a checkpoint; ``--resume`` continues."""

    def __init__(self, signum: int, epoch: int, position: int, checkpoint: Optional[Path]):
        self.signum, self.epoch, self.position, self.checkpoint = signum, epoch, position, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {position}; "
                         f"checkpoint {checkpoint}")


def build_network(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The network ``cfg`` trains: ``NetworkCIFAR`` / ``NetworkImageNet`` of a DARTS genotype
    (auxiliary head when ``auxiliary_weight > 0``) or the NAS-Bench-201 network of a cell."""
    if cfg.network == "nb201":
        return NB201Network(cfg.arch, C=cfg.channels, N=cfg.cells, num_classes=num_classes)
    cls = NetworkCIFAR if cfg.network == "cifar" else NetworkImageNet
    return cls(C=cfg.channels, num_classes=num_classes, layers=cfg.layers, auxiliary=cfg.auxiliary_weight > 0,
               genotype=cfg.arch)


def _logits(out):
    return out if torch.is_tensor(out) else out[0]


def _empty_sums() -> Dict[str, float]:
    return {k: 0.0 for k in _SUMS}


def run_train(cfg: TrainConfig, opts: TrainOptions, run_dir, *, resume: bool = False,
              echo: Callable[[str], None] = print, folder_loaders=None) -> Dict[str, Any]:
    """Train (or, with ``resume``, continue training) as ``cfg`` says into ``run_dir``; returns
    the result dict also written to ``result.json``.

    Raises :class:`TrainInterrupted` after checkpointing on SIGINT/SIGTERM, :class:`TrainError`
    on a non-finite loss, ``OptionError`` for options out of range for this machine or world
    size, ``DataChangedError`` when a resumed run's dataset changed, ``DatasetError`` /
    ``CheckpointError`` / ``OSError`` for missing, corrupt or unwritable files. A new run that
    fails before its first checkpoint removes the run folder it created. ``folder_loaders``
    replaces :func:`~gaea_nas.data.image_folder.image_folder_loaders` for folder protocols."""
    run_dir = Path(run_dir)
    if opts.threads is not None and opts.threads > max_threads():
        raise OptionError(f"--threads {opts.threads}: at most {max_threads()} on this machine")
    return run_distributed(opts.device, lambda device, ctx: _Training(cfg, opts, run_dir, device, ctx, resume, echo,
                                                                      folder_loaders))


class _Training:
    def __init__(self, cfg: TrainConfig, opts: TrainOptions, run_dir: Path, device: torch.device,
                 ctx: Distributed, resume: bool, echo, folder_loaders):
        """Check and load every input; nothing is created on disk here."""
        self.cfg, self.opts, self.run_dir, self.ctx, self.echo = cfg, opts, run_dir, ctx, echo
        if cfg.batch_size % ctx.world_size or cfg.eval_batch_size < ctx.world_size:
            raise OptionError(f"--batch-size {cfg.batch_size}: the global batch must split evenly over the "
                              f"{ctx.world_size} ranks")
        if cfg.sync_bn and device.type != "cuda":
            raise OptionError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
        self.device = device = place_rank(device, ctx, opts.threads)
        self.created: Optional[Path] = None
        self.saved = False
        self.checkpointer: Optional[Checkpointer] = None
        self.pending: List[str] = []
        self.log: Callable[[str], None] = self.pending.append
        self.last_path = run_dir / Checkpointer.LAST
        self.state = load_checkpoint(self.last_path) if resume else None
        if self.state is not None:
            self._check_header()
        seed_everything(cfg.seed)
        self.data_fingerprint: Optional[Dict[str, Any]] = None
        if cfg.network == "imagenet" or (cfg.dataset and Path(cfg.dataset).expanduser().is_dir()
                                         and (Path(cfg.dataset).expanduser() / "val").is_dir()):
            if not cfg.dataset and folder_loaders is None:
                raise OptionError(f"protocol {cfg.protocol}: give the image folder (train/, val/) with --dataset PATH")
            self.batches = FolderTrainBatches(cfg.dataset, cfg, device, ctx.rank, ctx.world_size, opts.workers,
                                              opts.channels_last, loaders=folder_loaders)
        else:
            dataset = self._load_dataset()
            if cfg.cutout > min(dataset.image_size):
                raise OptionError(f"cutout {cfg.cutout} is larger than the {dataset.image_size} images of {dataset.name}")
            self.data_fingerprint = dataset_fingerprint(dataset)
            self.batches = DeviceTrainBatches(dataset, cfg, device, ctx.rank, ctx.world_size, opts.channels_last)
        self.dataset_name = Path(cfg.dataset).name or cfg.dataset
        self.top5 = cfg.network == "imagenet" and self.batches.num_classes >= 5

    def _load_dataset(self):
        try:
            return load_dataset(self.cfg.dataset, root=self.opts.data_root)
        except (DatasetError, OSError, ValueError):
            raise
        except Exception as e:  # a loader's unexpected error still names the dataset, in one line
            raise DatasetError(f"{self.cfg.dataset}: cannot be loaded ({type(e).__name__}: {e})") from e

    def _check_header(self) -> None:
        s, path = self.state, self.last_path
        if not isinstance(s, dict) or s.get("format") != CHECKPOINT_FORMAT or s.get("kind") != "train":
            raise CheckpointError(f"{path}: not a training checkpoint of this version")
        if s.get("config") != self.cfg.to_dict():
            raise CheckpointError(f"{path}: written by a different training config than {self.run_dir / 'config.json'}")

    # -- folder and model ------------------------------------------------------------------
    def _open_folder(self) -> None:
        if self.ctx.is_main:
            self.created = top_new_folder(self.run_dir)
            self.checkpointer = Checkpointer(self.run_dir)
        self.ctx.barrier()
        self.log = RunLog(self.run_dir, self.ctx.is_main, self.echo)
        for line in self.pending:
            self.log(line)

    def discard_if_unsaved(self) -> None:
        """After a failure: remove the folder a new run created if it wrote no checkpoint."""
        if self.ctx.is_main and not self.saved and self.state is None and self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)

    def _build(self) -> None:
        cfg, opts, ctx = self.cfg, self.opts, self.ctx
        net = build_network(cfg, self.batches.num_classes)
        h, w = self.batches.image_size
        self.params = count_parameters(net, exclude_auxiliary=True)
        self.macs = count_macs(net, (1, 3, h, w))
        if cfg.sync_bn and ctx.enabled:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(self.device)
        if opts.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.ema = None
        if cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.model = wrap_ddp(net, ctx, self.device, find_unused=False)
        if ctx.enabled:  # every rank drops other paths (the weights are rank 0's, broadcast by DDP)
            torch.manual_seed(mix_seed(cfg.seed, 3, ctx.rank))
        if opts.compile:
            self.model = torch.compile(self.model, mode=None if opts.compile == "default" else opts.compile,
                                       backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self, finished: bool = False) -> Optional[Path]:
        self._last_save = time.monotonic()
        if self.checkpointer is None:
            return None
        state = {
            "format": CHECKPOINT_FORMAT, "kind": "train", "config": self.cfg.to_dict(), "run": self.opts.to_dict(),
            "epoch": self.epoch, "position": self.position, "finished": finished,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": capture_rng_state(), "metrics": self.metrics.records, "sums": self.sums,
            "best": self.best, "wall_time_s": self._wall(), "data": self.data_fingerprint,
        }
        path = self.checkpointer.save(state)
        self.saved = True
        return path

    def _restore(self) -> None:
        s, path = self.state, self.last_path
        steps = self.batches.steps_per_epoch
        try:
            epoch, position = int(s["epoch"]), int(s["position"])
            if not (0 <= epoch <= self.cfg.epochs and 0 <= position < steps and len(s["metrics"]) == epoch):
                raise ValueError(f"epoch {epoch}, step {position} do not fit {self.cfg.epochs} epochs of {steps} steps")
            if set(s["sums"]) != set(_SUMS):
                raise ValueError("sums: unexpected keys")
            check_rng_state(s["rng"])
            self.net.load_state_dict(s["model"])
            self.optimizer.load_state_dict(s["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(s["ema"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: does not fit this run ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        saved_data = s.get("data")
        if self.data_fingerprint is not None and (saved_data or {}).get("sha256") != self.data_fingerprint["sha256"]:
            raise DataChangedError(f"{self.cfg.dataset}: the dataset's content differs from the one {path} was "
                                   "written with")
        restore_rng_state(s["rng"])
        self.epoch, self.position = epoch, position
        self.metrics = MetricsLog(self.run_dir, self.ctx.is_main, s["metrics"])
        self.sums, self.best = dict(s["sums"]), dict(s["best"])
        self.wall_before = float(s["wall_time_s"])

    def _wall(self) -> float:
        return self.wall_before + time.monotonic() - self.t0

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        self._build()
        self.epoch, self.position, self.wall_before = 0, 0, 0.0
        self.sums = _empty_sums()
        self.best: Dict[str, Any] = {"best_test_top1": None, "best_epoch": None}
        self.metrics = MetricsLog(self.run_dir, self.ctx.is_main)
        self.t0 = self._last_save = time.monotonic()
        if self.state is not None:
            self._restore()
            if self.ctx.enabled:  # the checkpoint holds rank 0's RNG: give each rank its own drop-path stream again
                torch.manual_seed(mix_seed(cfg.seed, 3, self.ctx.rank, self.epoch, self.position))
            self._open_folder()
            self.log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.position}")
        else:
            self._open_folder()
            self._start_log()
        self.t0 = time.monotonic()
        self.writer = self._tensorboard()
        self.faults = FaultInjector()
        try:
            with StopRequest() as stop:
                while self.epoch < cfg.epochs:
                    self._run_epoch(stop)
        except NonFiniteLossError as e:
            raise TrainError(f"{e} (epoch {self.epoch + 1}, step {self.position}); the last good checkpoint "
                             f"{self.last_path} is kept") from None
        finally:
            if self.writer is not None:
                self.writer.close()
        return self._finish()

    def _tensorboard(self):
        if not (self.opts.tensorboard and self.ctx.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run wrote after its last checkpoint
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.epoch + 1)

    def _start_log(self) -> None:
        cfg, opts, ctx = self.cfg, self.opts, self.ctx
        if ctx.is_main:
            write_json(self.run_dir / "config.json", {
                "config": cfg.to_dict(), "run": opts.to_dict(), "sources": list(PROTOCOL_SOURCES[cfg.protocol]),
                "torch": torch.__version__, "data": self.data_fingerprint, "world_size": ctx.world_size})
        self.log(f"train: {cfg.arch_name or cfg.space + ' cell'} under protocol {cfg.protocol} on {self.dataset_name} "
                 f"({self.batches.train_size} training, {self.batches.test_size} test images, "
                 f"{self.batches.num_classes} classes), seed {cfg.seed}, device {device_name(self.device)}"
                 + (f", {ctx.world_size} ranks of batch {cfg.batch_size // ctx.world_size}" if ctx.enabled else ""))
        self.log(f"network: {self.params / 1e6:.3f} M parameters (auxiliary head excluded), {self.macs:.1f} M "
                 f"multiply-adds; {self.batches.steps_per_epoch} steps/epoch")
        for key, value in cfg.to_dict().items():
            self.log(f"  {key} = {value}")

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, amp) -> List[float]:
        """One SGD step; returns ``[loss * batch, correct]`` (NonFiniteLossError before any update)."""
        cfg = self.cfg
        with amp:
            out = self.model(x)
            logits, aux = (out, None) if torch.is_tensor(out) else out
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if aux is not None and cfg.auxiliary_weight > 0:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
        stats = torch.stack([loss.detach().float() * len(y), (logits.detach().argmax(1) == y).sum().float()])
        stats = stats.tolist()
        if not math.isfinite(stats[0]):
            raise NonFiniteLossError(f"the training loss is {stats[0] / len(y)}; the step was not applied")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        return stats

    def _run_epoch(self, stop: StopRequest) -> None:
        cfg, opts, ctx = self.cfg, self.opts, self.ctx
        epoch, steps = self.epoch, self.batches.steps_per_epoch
        lr = cfg.lr_at(epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        drop = cfg.drop_path_at(epoch)
        if hasattr(self.net, "drop_path_prob"):
            self.net.drop_path_prob = drop  # the module itself, never a DDP or compile wrapper
        self.model.train()
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if opts.amp else contextlib.nullcontext()
        bar = progress_bar(steps, self.position, f"epoch {epoch + 1}/{cfg.epochs}", opts.progress and ctx.is_main)
        every, minutes = opts.checkpoint_every_steps, opts.checkpoint_minutes
        s = self.sums
        with bar:
            for x, y in self.batches.train_batches(epoch, self.position):
                if ctx.any_flag(stop.signum is not None, self.device):
                    path = self._checkpoint()
                    raise TrainInterrupted(stop.signum or signal.SIGTERM, epoch, self.position, path)
                t = time.perf_counter()
                loss_sum, correct = self._train_step(x, y, amp)
                s["loss"] += loss_sum
                s["correct"] += correct
                s["images"] += len(y)
                s["seconds"] += time.perf_counter() - t
                self.position += 1
                self.faults.step_done()
                bar.set_postfix(loss=f"{s['loss'] / s['images']:.3f}", acc=f"{s['correct'] / s['images']:.3f}",
                                refresh=False)
                bar.update(1)
                if self.position < steps and ((every and self.position % every == 0)
                                              or (minutes and time.monotonic() - self._last_save > 60 * minutes)):
                    self._checkpoint()
        self._end_epoch(lr, drop)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module) -> Dict[str, float]:
        model.eval()
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.opts.amp else contextlib.nullcontext()
        sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0}
        for x, y in self.batches.test_batches():
            with amp:
                logits = _logits(model(x)).float()
            sums["loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
            sums["top1"] += float((logits.argmax(1) == y).sum())
            if self.top5:
                top = logits.topk(5, dim=1).indices
                sums["top5"] += float((top == y[:, None]).any(1).sum())
            sums["n"] += len(y)
        model.train()
        s = self.ctx.sum_values(sums, self.device)
        n = max(s["n"], 1.0)
        out = {"test_loss": s["loss"] / n, "test_top1": s["top1"] / n}
        if self.top5:
            out["test_top5"] = s["top5"] / n
        return out

    def _end_epoch(self, lr: float, drop: float) -> None:
        cfg, ctx = self.cfg, self.ctx
        # evaluate every rank's copy with rank 0's BatchNorm statistics (DDP syncs them at each forward)
        ctx.broadcast_(list(self.net.buffers()))
        s = ctx.sum_values(self.sums, self.device)
        n = max(s["images"], 1.0)
        record: Dict[str, Any] = {
            "epoch": self.epoch + 1, "lr": lr, "drop_path_prob": drop,
            "train_loss": s["loss"] / n, "train_acc": s["correct"] / n,
            "images_per_s": s["images"] / max(s["seconds"] / ctx.world_size, 1e-9),
            **self._evaluate(self.net),
        }
        if self.ema is not None:
            ema = self._evaluate(self.ema.module)
            record.update({f"ema_{k}": v for k, v in ema.items()})
        best = self.best
        if best["best_test_top1"] is None or record["test_top1"] > best["best_test_top1"]:
            best.update(best_test_top1=record["test_top1"], best_epoch=record["epoch"])
        if self.ema is not None and (best.get("best_ema_test_top1") is None
                                     or record["ema_test_top1"] > best["best_ema_test_top1"]):
            best.update(best_ema_test_top1=record["ema_test_top1"], best_ema_epoch=record["epoch"])
        self.metrics.append(record)
        if self.writer is not None:
            for k, v in record.items():
                if k != "epoch":
                    self.writer.add_scalar(k, v, record["epoch"])
            self.writer.flush()
        self.epoch, self.position, self.sums = self.epoch + 1, 0, _empty_sums()
        self._checkpoint()
        left = (cfg.epochs - self.epoch) * (self._wall() - self.wall_before) / max(len(self.metrics.records), 1)
        self.log(f"epoch {record['epoch']:3d}/{cfg.epochs}  lr {lr:.5f}  drop path {drop:.3f}  train loss "
                 f"{record['train_loss']:.3f} acc {100 * record['train_acc']:.2f}%  test top1 "
                 f"{100 * record['test_top1']:.2f}%" + (f" top5 {100 * record['test_top5']:.2f}%" if self.top5 else "")
                 + (f"  EMA top1 {100 * record['ema_test_top1']:.2f}%" if self.ema is not None else "")
                 + f"  {record['images_per_s']:.0f} img/s" + (f"  ETA {left / 60:.1f} min" if self.epoch < cfg.epochs else ""))

    def _finish(self) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        last = self.metrics.records[-1]
        result: Dict[str, Any] = {
            "arch": cfg.arch, "arch_name": cfg.arch_name, "space": cfg.space, "protocol": cfg.protocol,
            "params": self.params, "macs": self.macs, "test_top1": last["test_top1"],
            **{k: v for k, v in self.best.items()}, "epochs": cfg.epochs, "wall_time_s": self._wall(),
            "device": device_name(self.device), "seed": cfg.seed, "dataset": self.dataset_name,
            "train_images": self.batches.train_size, "test_images": self.batches.test_size,
            "world_size": ctx.world_size,
        }
        if self.top5:
            result["test_top5"] = last["test_top5"]
        if self.ema is not None:
            result["ema_test_top1"] = last["ema_test_top1"]
            if self.top5:
                result["ema_test_top5"] = last["ema_test_top5"]
        if ctx.is_main:
            self._checkpoint(finished=True)
            write_json(self.run_dir / "result.json", result)
        self.log(f"done in {result['wall_time_s'] / 60:.1f} min: test top1 {100 * result['test_top1']:.2f}% (best "
                 f"{100 * result['best_test_top1']:.2f}% at epoch {result['best_epoch']}), "
                 f"{self.params / 1e6:.3f} M parameters")
        return result
