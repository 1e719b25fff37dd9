"""Search schedules: the weight learning rate (cosine, and the release's
``CosinePowerAnnealing``) and the GDAS temperature ``tau`` (docs/method.md §2.3 and §5).

Epochs are 0-based: ``lr(e)`` is the rate used *during* epoch ``e`` (the search loop sets it at
the start of each epoch; the released code steps its scheduler once at the end of each epoch,
which gives the same rates).
"""
from __future__ import annotations

import math

__all__ = ["cosine_lr", "cosine_power_lr", "gdas_tau"]


def _check_horizon(scheduler_epochs: int) -> None:
    if isinstance(scheduler_epochs, bool) or not isinstance(scheduler_epochs, int) or scheduler_epochs < 1:
        raise ValueError(f"scheduler_epochs must be a positive int, got {scheduler_epochs!r}")


def cosine_lr(epoch: int, base: float, eta_min: float, scheduler_epochs: int) -> float:
    """Cosine annealing ``base -> eta_min`` over ``scheduler_epochs``; stays at ``eta_min``
    after the horizon (no restart). Equals ``torch.optim.lr_scheduler.CosineAnnealingLR``
    with ``T_max=scheduler_epochs`` for ``epoch <= scheduler_epochs``."""
    _check_horizon(scheduler_epochs)
    t = min(max(epoch, 0), scheduler_epochs) / scheduler_epochs
    return eta_min + (base - eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_power_lr(
    epoch: int,
    base: float,
    eta_min: float,
    scheduler_epochs: int,
    power: float = 1.0,
    cycles: int = 1,
    cycle_decay: float = 0.5,
) -> float:
    """The release's ``CosinePowerAnnealing`` (liamcli/gaea_release ``cnn/lr_schedulers.py``).

    Each cycle lasts ``scheduler_epochs // cycles`` epochs; at cycle ``c`` the peak is
    ``base * cycle_decay**c`` (warm restart with the peak halved by default). With ``power``
    != 1 the cosine factor ``f`` becomes ``(power**(f+1) - power) / (power**2 - power)``.
    Release quirk: run 25 epochs under the release's 50-epoch horizon and the last epoch's
    LR is only ~0.0138 (0.025 -> 0.001), not 0.001."""
    _check_horizon(scheduler_epochs)
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ValueError(f"cycles must be a positive int, got {cycles!r}")
    per_cycle = scheduler_epochs // cycles
    if per_cycle < 1:
        raise ValueError(f"scheduler_epochs ({scheduler_epochs}) must be >= cycles ({cycles})")
    epoch = max(int(epoch), 0)
    cycle = epoch // per_cycle
    f = 0.5 * (1.0 + math.cos(math.pi * (epoch % per_cycle) / per_cycle))
    if power != 1:
        f = (power ** (f + 1.0) - power) / (power ** 2 - power)
    return eta_min + (base * cycle_decay ** cycle - eta_min) * f


def gdas_tau(epoch: int, epochs: int, tau_max: float = 10.0, tau_min: float = 0.1, warmup: int = 0,
             release_denominator: bool = True) -> float:
    """GDAS temperature for (0-based) ``epoch`` of an ``epochs``-epoch search.

    ``tau = tau_max - (tau_max - tau_min) * max(epoch - warmup, 0) / D``. The release
    (GAEA GDAS, ``architect_egdas.py``) uses ``D = epochs - 1`` even with a warm-up, so tau
    never reaches ``tau_min`` (final ~5.1 / 3.4 / 2.1 for 100 / 150 / 250 epochs with a
    50-epoch warm-up). ``release_denominator=False`` uses ``D = epochs - 1 - warmup`` so the
    last epoch reaches ``tau_min``. With ``warmup=0`` both are upstream GDAS's linear anneal."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    denom = epochs - 1 if release_denominator else epochs - 1 - warmup
    if denom <= 0:
        return float(tau_max)
    progress = max(epoch - warmup, 0) / denom
    return max(tau_max - (tau_max - tau_min) * progress, tau_min)
