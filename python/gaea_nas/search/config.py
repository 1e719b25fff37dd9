"""Every knob of a search in one frozen, validated, JSON-serialisable dataclass, and the
per-space, per-method defaults of docs/method.md §5 (``default_config``).

Presets: ``default`` follows the released hyper-parameters with the release's accidental
quirks fixed (the LR schedule spans the run's own epochs, the GDAS temperature reaches its
minimum). ``release`` turns every documented quirk back on for fidelity (50-epoch
``CosinePowerAnnealing`` horizon, C=24 and no ``none`` op on NB201, the GDAS ``tau``
denominator ``epochs - 1``, ...). :func:`release_notes` lists what is on, for the log.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from .schedules import cosine_lr, cosine_power_lr, gdas_tau

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "PRESETS",
    "SPACES",
    "SearchConfig",
    "default_config",
    "release_notes",
]

SPACES = ("nb201", "darts")
METHODS = ("gaea", "darts", "pcdarts", "gaea-pcdarts", "gdas", "gaea-gdas")
OBJECTIVES = ("erm", "bilevel")
PRESETS = ("default", "release")
LR_SCHEDULES = ("cosine", "cosine_power")
ORDERS = ("clamp_then_normalize", "normalize_then_clamp")
SEARCH_SAMPLING = ("epoch", "with_replacement")
# methods whose supernet needs the partial-channel DARTS cell
_DARTS_ONLY = ("pcdarts", "gaea-pcdarts")
_EG_METHODS = ("gaea", "gaea-pcdarts", "gaea-gdas")
_ARCH_KIND = {"gaea": "simplex", "gaea-pcdarts": "simplex", "darts": "softmax", "pcdarts": "softmax",
              "gdas": "gdas", "gaea-gdas": "gaea-gdas"}


@dataclass(frozen=True)
class SearchConfig:
    """One search's full configuration. Build it with :func:`default_config`; construction
    validates every field and raises ``ValueError`` naming the bad one."""

    # what to search
    space: str = "nb201"
    method: str = "gaea"
    dataset: str = "cifar10"
    preset: str = "default"
    seed: int = 0
    # data and budget
    epochs: int = 25
    batch_size: int = 64
    objective: str = "erm"
    train_portion: float = 0.5          # bilevel: share of the training set for the weights
    search_sampling: str = "epoch"      # arch batches: per-epoch shuffle, or with replacement (release)
    # weight optimiser (SGD) and its schedule
    lr: float = 0.025
    min_lr: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    lr_schedule: str = "cosine"         # "cosine" or the release's "cosine_power"
    scheduler_epochs: int = 25
    # architecture optimiser: EG (GAEA methods) or Adam (darts, pcdarts, gdas)
    arch_lr: float = 0.1
    arch_betas: Tuple[float, float] = (0.5, 0.999)   # Adam only
    arch_weight_decay: float = 1e-3                 # Adam only
    edge_lr: float = 0.1                            # EG rate of the edge weights
    entropic_reg: float = 0.0                       # EG only
    min_value: float = 1e-5                         # EG clamp floor
    order: str = "clamp_then_normalize"             # EG only
    adapt_lr: bool = False
    arch_grad_clip: Optional[float] = None
    arch_warmup_epochs: int = 0                     # no arch step before this epoch
    # GDAS temperature
    tau_max: float = 10.0
    tau_min: float = 0.1
    tau_warmup_epochs: int = 0
    tau_release_denominator: bool = False           # release: divide by epochs - 1
    # supernet
    exclude_none: bool = False
    channels: int = 16                              # C
    cells: int = 5                                  # NB201: cells per stage (N)
    layers: int = 8                                 # DARTS space: cells in the network
    partial_channels: int = 1                       # PC-DARTS K (1 = off)
    edge_weights: bool = False
    deterministic: bool = False

    def __post_init__(self):
        if isinstance(self.arch_betas, list):
            object.__setattr__(self, "arch_betas", tuple(self.arch_betas))
        _validate(self)

    # -- derived -------------------------------------------------------------------------
    @property
    def arch_optimizer(self) -> str:
        """``"eg"`` for the GAEA methods, ``"adam"`` for darts, pcdarts and gdas."""
        return "eg" if self.method in _EG_METHODS else "adam"

    @property
    def arch_kind(self) -> str:
        """The ``ArchParameters`` / supernet ``arch`` kind this method uses."""
        return _ARCH_KIND[self.method]

    @property
    def is_gdas(self) -> bool:
        return self.method in ("gdas", "gaea-gdas")

    def tau(self, epoch: int) -> float:
        """GDAS temperature for (0-based) ``epoch`` under this config."""
        return gdas_tau(epoch, self.epochs, self.tau_max, self.tau_min, self.tau_warmup_epochs,
                        self.tau_release_denominator)

    def weight_lr(self, epoch: int) -> float:
        """Weight LR used during (0-based) ``epoch`` under this config's schedule."""
        if self.lr_schedule == "cosine_power":
            return cosine_power_lr(epoch, self.lr, self.min_lr, self.scheduler_epochs)
        return cosine_lr(epoch, self.lr, self.min_lr, self.scheduler_epochs)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch_betas"] = list(self.arch_betas)
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], *, partial: bool = False) -> "SearchConfig":
        """The config saved as ``d`` (a ``to_dict()`` result, e.g. a run's ``config.json``).

        Every field must be present, since a saved config names them all and a silently
        defaulted field would change the search; ``partial=True`` lets missing fields take the
        dataclass defaults. Any fault (not an object, a missing, unknown or non-string key, a
        value of the wrong type or out of range) raises one ``ValueError`` naming the key."""
        if not isinstance(d, dict):
            raise ValueError(f"SearchConfig: expected a JSON object, got {type(d).__name__}")
        odd = [k for k in d if not isinstance(k, str)]
        if odd:
            raise ValueError(f"SearchConfig: field names must be strings, got {odd[0]!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"SearchConfig: unknown field(s) {unknown}")
        missing = [k for k in known if k not in d]
        if missing and not partial:
            raise ValueError(f"SearchConfig.{missing[0]}: missing from the saved config ({len(missing)} field(s) "
                             f"missing: {missing[:6]}); every field must be present")
        try:
            return cls(**d)
        except TypeError as e:  # not expected after the checks above; still one ValueError
            raise ValueError(f"SearchConfig: {e}") from e

    @classmethod
    def from_json(cls, text: Union[str, bytes], *, partial: bool = False) -> "SearchConfig":
        """:meth:`from_dict` of a JSON text; invalid JSON (also undecodable bytes or nesting too
        deep to parse) raises ``ValueError``."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise ValueError(f"SearchConfig: expected JSON text, got {type(text).__name__}")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
            raise ValueError(f"SearchConfig: invalid JSON ({type(e).__name__}: {str(e)[:200]})") from e
        return cls.from_dict(d, partial=partial)

    def replace(self, **changes) -> "SearchConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------
# validation


def _bad(name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"SearchConfig.{name}: {why}, got {value!r}")


def _choice(cfg, name, options):
    v = getattr(cfg, name)
    if v not in options:
        raise _bad(name, v, f"must be one of {options}")


def _int(cfg, name, minimum):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, v, "must be an int")
    if v < minimum:
        raise _bad(name, v, f"must be >= {minimum}")


def _num(cfg, name, minimum=0.0, positive=False, maximum=None):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, v, "must be a finite number")
    if positive and v <= 0:
        raise _bad(name, v, "must be > 0")
    if v < minimum:
        raise _bad(name, v, f"must be >= {minimum}")
    if maximum is not None and v > maximum:
        raise _bad(name, v, f"must be <= {maximum}")


def _bool(cfg, name):
    v = getattr(cfg, name)
    if not isinstance(v, bool):
        raise _bad(name, v, "must be true or false")


def _validate(c: SearchConfig) -> None:
    _choice(c, "space", SPACES)
    _choice(c, "method", METHODS)
    _choice(c, "objective", OBJECTIVES)
    _choice(c, "preset", PRESETS)
    _choice(c, "lr_schedule", LR_SCHEDULES)
    _choice(c, "order", ORDERS)
    _choice(c, "search_sampling", SEARCH_SAMPLING)
    if c.space == "nb201" and c.method in _DARTS_ONLY:
        raise ValueError(f"SearchConfig.method: {c.method!r} is not available in space 'nb201' "
                         f"(partial channels need the DARTS space); use space='darts'")
    if not isinstance(c.dataset, str) or not c.dataset:
        raise _bad("dataset", c.dataset, "must be a non-empty string (name or path)")
    for name in ("epochs", "batch_size", "scheduler_epochs", "channels", "cells", "layers", "partial_channels"):
        _int(c, name, 1)
    for name in ("seed", "arch_warmup_epochs", "tau_warmup_epochs"):
        _int(c, name, 0)
    for name in ("lr", "arch_lr", "edge_lr", "grad_clip", "min_value", "tau_max", "tau_min"):
        _num(c, name, positive=True)
    for name in ("min_lr", "weight_decay", "arch_weight_decay", "entropic_reg"):
        _num(c, name)
    _num(c, "momentum", maximum=1.0)
    _num(c, "train_portion", positive=True, maximum=1.0)
    if c.objective == "bilevel" and c.train_portion >= 1.0:
        raise _bad("train_portion", c.train_portion, "must be < 1 for a bilevel search (the rest is the search split)")
    for name in ("nesterov", "adapt_lr", "tau_release_denominator", "exclude_none", "edge_weights", "deterministic"):
        _bool(c, name)
    if c.min_lr > c.lr:
        raise _bad("min_lr", c.min_lr, f"must be <= lr ({c.lr})")
    if c.min_value >= 1.0:
        raise _bad("min_value", c.min_value, "must be < 1 (the EG clamp floor)")
    if c.tau_min > c.tau_max:
        raise _bad("tau_min", c.tau_min, f"must be <= tau_max ({c.tau_max})")
    if c.nesterov and c.momentum == 0:
        raise _bad("nesterov", c.nesterov, "needs momentum > 0")
    if c.arch_grad_clip is not None:
        _num(c, "arch_grad_clip", positive=True)
    b = c.arch_betas
    if (not isinstance(b, tuple) or len(b) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)):
        raise _bad("arch_betas", b, "must be two numbers in [0, 1)")
    if c.arch_warmup_epochs >= c.epochs:
        raise _bad("arch_warmup_epochs", c.arch_warmup_epochs,
                   f"must be < epochs ({c.epochs}) or no architecture step runs; lower it for short runs")
    if c.space == "nb201" and c.partial_channels != 1:
        raise _bad("partial_channels", c.partial_channels, "must be 1 in space 'nb201'")
    if c.channels % c.partial_channels:
        raise _bad("partial_channels", c.partial_channels, f"must divide channels ({c.channels})")


# ---------------------------------------------------------------------------------------
# defaults (docs/method.md §5)


def _base(space: str, method: str) -> Dict[str, Any]:
    """Released defaults for (space, method), preset ``default``."""
    d: Dict[str, Any] = {}
    if space == "nb201":
        # GAEA DARTS on NB201 (release README / mode/search_nasbench201.yaml)
        d.update(epochs=25, batch_size=64, objective="erm", lr=0.025, min_lr=0.001, weight_decay=3e-4,
                 channels=16, cells=5)
        if method == "darts":  # NB201 DARTS-V1 (AutoDL configs/nas-benchmark/algos/DARTS.config)
            d.update(epochs=50, nesterov=True, weight_decay=5e-4, objective="bilevel")
        elif method == "gdas":  # NB201 GDAS (AutoDL GDAS.config): 250 epochs, tau linear, no warm-up
            d.update(epochs=250, nesterov=True, weight_decay=5e-4, objective="bilevel")
        elif method == "gaea-gdas":  # release egdas: run.epochs mandatory; 250 as upstream GDAS
            d.update(epochs=250)
    else:
        # DARTS search (quark0/darts train_search.py); GAEA DARTS on the DARTS space
        d.update(epochs=50, batch_size=64, objective="bilevel", lr=0.025, min_lr=0.001, weight_decay=3e-4,
                 channels=16, layers=8)
        if method in ("pcdarts", "gaea-pcdarts"):  # PC-DARTS / GAEA PC-DARTS (eedarts)
            d.update(batch_size=256, lr=0.1, min_lr=0.0, partial_channels=4, edge_weights=True)
        elif method in ("gdas", "gaea-gdas"):
            d.update(epochs=250)
    if method in _EG_METHODS:
        d.update(arch_lr=0.1, edge_lr=0.1, entropic_reg=0.0, order="clamp_then_normalize")
        if method == "gaea-gdas":  # architect_egdas.py
            d.update(arch_lr=0.01, entropic_reg=0.01, order="normalize_then_clamp",
                     arch_warmup_epochs=50, tau_warmup_epochs=50)
    else:  # Adam on softmax logits
        d.update(arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3)
        if method == "pcdarts":  # yuhuixu1993/PC-DARTS: lr 6e-4 and a 15-epoch arch warm-up
            d.update(arch_lr=6e-4, arch_warmup_epochs=15)
    return d


def _release(space: str, method: str) -> Dict[str, Any]:
    """What the ``release`` preset changes on top of the defaults."""
    d: Dict[str, Any] = dict(lr_schedule="cosine_power", scheduler_epochs=50, deterministic=True,
                             search_sampling="with_replacement", tau_release_denominator=True)
    if space == "nb201":
        d.update(channels=24)
        if method in ("gaea", "darts"):  # README: exclude_zero=true (GDAS yaml: false)
            d.update(exclude_none=True)
    return d


def default_config(space: str, method: str, preset: str = "default", **overrides) -> Tuple[SearchConfig, List[str]]:
    """Defaults for ``(space, method)`` under ``preset``, with ``overrides`` on top.

    Returns ``(config, notes)``; ``notes`` are human-readable lines naming the release quirks
    and method conventions in force (see :func:`release_notes`), for the log.
    ``scheduler_epochs`` follows ``epochs`` unless the preset or an override sets it."""
    if space not in SPACES:
        raise ValueError(f"SearchConfig.space: must be one of {SPACES}, got {space!r}")
    if method not in METHODS:
        raise ValueError(f"SearchConfig.method: must be one of {METHODS}, got {method!r}")
    if preset not in PRESETS:
        raise ValueError(f"SearchConfig.preset: must be one of {PRESETS}, got {preset!r}")
    if space == "nb201" and method in _DARTS_ONLY:
        raise ValueError(f"SearchConfig.method: {method!r} is not available in space 'nb201' "
                         f"(partial channels need the DARTS space); use space='darts'")
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"SearchConfig: unknown field(s) {unknown}")
    for fixed in ("space", "method", "preset"):
        if fixed in overrides:
            raise ValueError(f"SearchConfig.{fixed}: pass it as default_config's argument, not as an override")
    d = _base(space, method)
    if preset == "release":
        d.update(_release(space, method))
    d.update(overrides)
    d.setdefault("scheduler_epochs", d["epochs"])
    cfg = SearchConfig(space=space, method=method, preset=preset, **d)
    return cfg, release_notes(cfg)


def release_notes(cfg: SearchConfig) -> List[str]:
    """Human-readable lines on the release quirks and method conventions ``cfg`` has on."""
    notes = [f"preset {cfg.preset!r}: {cfg.method} on {cfg.space}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
             f"objective {cfg.objective}"]
    last = cfg.weight_lr(cfg.epochs - 1)
    if cfg.lr_schedule == "cosine_power":
        notes.append(f"weight LR: release CosinePowerAnnealing (power 1, one cycle, peak halved at each restart) "
                     f"over scheduler_epochs={cfg.scheduler_epochs}, {cfg.lr:g} -> {cfg.min_lr:g}")
    else:
        notes.append(f"weight LR: cosine over scheduler_epochs={cfg.scheduler_epochs}, {cfg.lr:g} -> {cfg.min_lr:g}")
    if cfg.scheduler_epochs != cfg.epochs:
        notes.append(f"release quirk: scheduler_epochs ({cfg.scheduler_epochs}) != epochs ({cfg.epochs}); "
                     f"the last epoch's LR is {last:.4g}, not {cfg.min_lr:g}")
        if cfg.lr_schedule == "cosine_power" and cfg.epochs > cfg.scheduler_epochs:
            notes.append(f"release quirk: warm restart every {cfg.scheduler_epochs} epochs with the peak halved")
    if cfg.space == "nb201" and cfg.exclude_none:
        notes.append("exclude_none: the 'none' op is removed from the NB201 search space (release README)")
    if cfg.preset == "release" and cfg.space == "nb201":
        notes.append(f"supernet C={cfg.channels} (release), N={cfg.cells}")
    if cfg.arch_optimizer == "eg":
        notes.append(f"architecture: exponentiated gradient lr {cfg.arch_lr:g}, clamp {cfg.min_value:g}, "
                     f"order {cfg.order}, entropic_reg {cfg.entropic_reg:g}")
        if cfg.order == "normalize_then_clamp":
            notes.append("release quirk (EG GDAS): normalise then clamp, so rows may sum slightly above 1")
    else:
        notes.append(f"architecture: Adam lr {cfg.arch_lr:g}, betas {tuple(cfg.arch_betas)}, "
                     f"weight decay {cfg.arch_weight_decay:g}")
    if cfg.edge_weights:
        notes.append(f"edge weights on (per-node normalised{', EG lr %g, no clamp' % cfg.edge_lr if cfg.arch_optimizer == 'eg' else ', softmax'})")
    if cfg.arch_warmup_epochs:
        notes.append(f"architecture frozen for the first {cfg.arch_warmup_epochs} epochs")
    elif cfg.method == "gaea-pcdarts":
        notes.append("GAEA PC-DARTS updates the architecture from step 0 (no 15-epoch warm-up)")
    if cfg.is_gdas:
        notes.append(f"GDAS tau {cfg.tau_max:g} -> {cfg.tau_min:g}, warm-up {cfg.tau_warmup_epochs} epochs; "
                     f"final tau {cfg.tau(cfg.epochs - 1):.3g}")
        if cfg.tau_release_denominator and cfg.tau_warmup_epochs:
            notes.append("release quirk: tau denominator is epochs - 1 (not epochs - 1 - warm-up), "
                         "so tau never reaches its minimum")
    if cfg.search_sampling == "with_replacement":
        notes.append("release behaviour: architecture batches sampled with replacement (fresh iterator per step)")
    if cfg.deterministic:
        notes.append("deterministic: cudnn.deterministic=True, benchmark=False (release RNGSeed)")
    return notes
