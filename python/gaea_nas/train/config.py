"""What a training run does (:class:`TrainConfig`: the cell, the protocol's values and any
overrides; it decides the numbers) and how it runs (:class:`TrainOptions`: device, threads,
logging; it does not). Both are frozen, validated and saved in the run's ``config.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Tuple

from ..search.schedules import cosine_lr
from .protocols import PROTOCOLS, protocol_values, protocols_for_space

__all__ = ["AMP_DTYPE_NAMES", "COMPILE_MODES", "LR_SCHEDULES", "NETWORKS", "LINEAR_TAIL_EPOCHS",
           "TrainConfig", "TrainOptions", "resolve_config"]

NETWORKS = ("cifar", "imagenet", "nb201")
LR_SCHEDULES = ("cosine", "exponential", "linear")
AMP_DTYPE_NAMES = ("bf16",)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# PC-DARTS' adjust_lr: a smaller slope over the last 5 epochs (so the last LR is not lr / 250)
LINEAR_TAIL_EPOCHS = 5


def _bad(cls: str, name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{cls}.{name}: {why}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """One training run's full configuration; construction validates every field and raises
    ``ValueError`` naming the bad one. Build it with :func:`resolve_config`.

    ``batch_size`` and ``eval_batch_size`` are global: under ``torchrun`` each rank takes
    ``batch_size / world_size``. Accuracies are recorded as fractions in ``[0, 1]``."""

    protocol: str = "darts"
    space: str = "darts"                 # the cell's space: darts | nb201
    arch: str = "DARTS_V2"               # the cell: a Genotype literal or an NB201 arch string
    arch_name: Optional[str] = None      # the published name it came from, if any
    network: str = "cifar"               # cifar (NetworkCIFAR) | imagenet (NetworkImageNet) | nb201
    dataset: str = "cifar10"             # a dataset name or a path ('' : must be given)
    seed: int = 0
    epochs: int = 600
    batch_size: int = 96
    eval_batch_size: int = 96
    channels: int = 36                   # C
    layers: int = 20                     # DARTS networks: cells
    cells: int = 5                       # NB201: cells per stage (N)
    auxiliary_weight: float = 0.4        # 0: no auxiliary head
    drop_path: float = 0.2               # final drop-path probability (ramped p * epoch / epochs)
    lr: float = 0.025
    lr_schedule: str = "cosine"          # cosine (to min_lr) | exponential (x lr_gamma) | linear (PC-DARTS)
    lr_gamma: float = 0.97
    warmup_epochs: int = 0               # linear warm-up epochs (lr * (epoch + 1) / warmup_epochs)
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0               # 0: no clipping
    cutout: int = 16
    label_smoothing: float = 0.0         # on the training loss only
    ema_decay: float = 0.0               # 0: no weight averaging
    sync_bn: bool = False
    train_images: Optional[int] = None   # a seeded subset of the training set
    test_images: Optional[int] = None    # a seeded subset of the test set
    image_size: int = 224                # folder datasets: RandomResizedCrop / centre-crop size
    resize: int = 256                    # folder datasets: evaluation resize
    color_jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)

    def __post_init__(self):
        if isinstance(self.color_jitter, list):
            object.__setattr__(self, "color_jitter", tuple(self.color_jitter))
        _validate(self)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch``: the scheduler's value after ``epoch``
        steps, i.e. the scheduler is stepped after each epoch (``lr_at(0) == lr``, warm-up aside)."""
        if self.lr_schedule == "cosine":
            lr = cosine_lr(epoch, self.lr, self.min_lr, self.epochs)
        elif self.lr_schedule == "exponential":
            lr = self.lr * self.lr_gamma ** epoch
        elif self.epochs > LINEAR_TAIL_EPOCHS:  # PC-DARTS train_imagenet.py adjust_lr
            tail = LINEAR_TAIL_EPOCHS
            if self.epochs - epoch > tail:
                lr = self.lr * (self.epochs - tail - epoch) / (self.epochs - tail)
            else:
                lr = self.lr * (self.epochs - epoch) / ((self.epochs - tail) * tail)
        else:  # too short for the tail: a plain linear decay
            lr = self.lr * (self.epochs - epoch) / self.epochs
        if epoch < self.warmup_epochs:
            lr = lr * (epoch + 1) / self.warmup_epochs
        return lr

    def drop_path_at(self, epoch: int) -> float:
        """The drop-path probability of (0-based) ``epoch``: ``drop_path * epoch / epochs``."""
        return self.drop_path * epoch / self.epochs

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["color_jitter"] = list(self.color_jitter)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config saved as ``d``; every field must be present (``ValueError`` naming it)."""
        return _from_dict(cls, d, require_all=True)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _validate(c: TrainConfig) -> None:
    name = "TrainConfig"
    if c.protocol not in PROTOCOLS:
        raise _bad(name, "protocol", c.protocol, f"must be one of {tuple(PROTOCOLS)}")
    if c.space not in ("darts", "nb201"):
        raise _bad(name, "space", c.space, "must be 'darts' or 'nb201'")
    if c.network not in NETWORKS:
        raise _bad(name, "network", c.network, f"must be one of {NETWORKS}")
    if (c.network == "nb201") != (c.space == "nb201"):
        raise ValueError(f"TrainConfig.protocol: {c.protocol!r} trains {'NAS-Bench-201' if c.network == 'nb201' else 'DARTS'} "
                         f"cells, but the cell is a {c.space} cell; use one of {protocols_for_space(c.space)}")
    if c.lr_schedule not in LR_SCHEDULES:
        raise _bad(name, "lr_schedule", c.lr_schedule, f"must be one of {LR_SCHEDULES}")
    if not isinstance(c.arch, str) or not c.arch:
        raise _bad(name, "arch", c.arch, "must be a non-empty string")
    if not isinstance(c.dataset, str):
        raise _bad(name, "dataset", c.dataset, "must be a string (a name or a path)")
    for f in ("epochs", "batch_size", "eval_batch_size", "channels", "layers", "cells", "image_size", "resize"):
        v = getattr(c, f)
        if not _is_int(v) or v < 1:
            raise _bad(name, f, v, "must be a positive int")
    for f in ("seed", "warmup_epochs", "cutout"):
        v = getattr(c, f)
        if not _is_int(v) or v < 0:
            raise _bad(name, f, v, "must be an int >= 0")
    if c.seed >= 2 ** 63:
        raise _bad(name, "seed", c.seed, "must be below 2**63")
    for f in ("train_images", "test_images"):
        v = getattr(c, f)
        if v is not None and (not _is_int(v) or v < 1):
            raise _bad(name, f, v, "must be a positive int or null")
    for f in ("lr", "lr_gamma"):
        v = getattr(c, f)
        if not _is_num(v) or v <= 0:
            raise _bad(name, f, v, "must be a finite number > 0")
    for f in ("min_lr", "weight_decay", "grad_clip", "auxiliary_weight"):
        v = getattr(c, f)
        if not _is_num(v) or v < 0:
            raise _bad(name, f, v, "must be a finite number >= 0")
    for f in ("momentum", "drop_path", "label_smoothing", "ema_decay"):
        v = getattr(c, f)
        if not _is_num(v) or not 0 <= v < 1:
            raise _bad(name, f, v, "must be a number in [0, 1)")
    for f in ("nesterov", "sync_bn"):
        if not isinstance(getattr(c, f), bool):
            raise _bad(name, f, getattr(c, f), "must be true or false")
    if c.min_lr > c.lr:
        raise _bad(name, "min_lr", c.min_lr, f"must be <= lr ({c.lr})")
    if c.nesterov and c.momentum == 0:
        raise _bad(name, "nesterov", c.nesterov, "needs momentum > 0")
    if c.network in ("cifar", "imagenet") and (c.channels % 2):
        raise _bad(name, "channels", c.channels, "must be even for DARTS networks")
    cj = c.color_jitter
    if not (isinstance(cj, tuple) and len(cj) == 4 and all(_is_num(x) and x >= 0 for x in cj) and cj[3] <= 0.5):
        raise _bad(name, "color_jitter", cj, "must be four numbers >= 0 (brightness, contrast, saturation, hue <= 0.5)")


@dataclass(frozen=True)
class TrainOptions:
    """How a training run runs (nothing here changes its numbers on a given device)."""

    data_root: Optional[str] = None       # folder of the named datasets (cifar10, ...)
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    amp: Optional[str] = None             # None | "bf16"
    channels_last: bool = False
    compile: Optional[str] = None         # None | default | reduce-overhead | max-autotune
    workers: int = 4                      # folder datasets: loader worker processes
    tensorboard: bool = False             # also write TensorBoard event files (run_dir/tensorboard)
    checkpoint_every_steps: int = 0       # also checkpoint mid-epoch every N steps (0: off)
    checkpoint_minutes: float = 10.0      # ... and at least this often (0: off)
    progress: bool = True
    threads: Optional[int] = None

    def __post_init__(self):
        if self.amp not in (None, *AMP_DTYPE_NAMES):
            raise _bad("TrainOptions", "amp", self.amp, f"must be one of {[None, *AMP_DTYPE_NAMES]}")
        if self.compile not in (None, *COMPILE_MODES):
            raise _bad("TrainOptions", "compile", self.compile, f"must be one of {[None, *COMPILE_MODES]}")
        for f in ("workers", "checkpoint_every_steps"):
            v = getattr(self, f)
            if not _is_int(v) or v < 0:
                raise _bad("TrainOptions", f, v, "must be an int >= 0")
        if not _is_num(self.checkpoint_minutes) or self.checkpoint_minutes < 0:
            raise _bad("TrainOptions", "checkpoint_minutes", self.checkpoint_minutes, "must be >= 0")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise _bad("TrainOptions", "threads", self.threads, "must be a positive int or null")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainOptions":
        return _from_dict(cls, d, require_all=False)


def _from_dict(cls, d: Any, require_all: bool):
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in set(d) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    missing = [k for k in known if k not in d]
    if require_all and missing:
        raise ValueError(f"{cls.__name__}.{missing[0]}: missing from the saved config")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{cls.__name__}: {e}") from e


def resolve_config(space: str, arch: str, protocol: Optional[str] = None, arch_name: Optional[str] = None,
                   **overrides) -> TrainConfig:
    """The config of training cell ``arch`` (of ``space``) under ``protocol`` (default: ``darts``
    for DARTS cells, ``nb201`` for NAS-Bench-201 cells), with ``overrides`` (field values, e.g.
    from ``--epochs`` or ``--set``) applied; ``ValueError`` names an unknown or bad field."""
    if protocol is None:
        protocol = "nb201" if space == "nb201" else "darts"
    values = protocol_values(protocol)
    known = {f.name for f in fields(TrainConfig)}
    fixed = {"protocol", "space", "arch", "arch_name", "network"}
    for key in overrides:
        if key not in known:
            raise ValueError(f"--set {key}: not a TrainConfig field; fields are {', '.join(sorted(known - fixed))}")
        if key in fixed:
            raise ValueError(f"--set {key}: {key} comes from ARCH and --protocol, it cannot be set")
    values.update(space=space, arch=arch, arch_name=arch_name, **overrides)
    return TrainConfig(**values)
