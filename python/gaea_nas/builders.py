"""Build a search's supernet and optimisers from a :class:`~gaea_nas.search_config.SearchConfig`.

- Supernet: :class:`NB201SuperNet` (C, N) or :class:`DartsSuperNet` (C, layers, partial
  channels) with the method's architecture parameterisation (``cfg.arch_kind``).
- Architecture optimiser: ``ExponentiatedGradient`` for the GAEA methods (op weights with the
  clamp floor, order and entropic regulariser of the config; edge weights per node with
  ``edge_lr`` and no clamp), Adam on the logits for darts / pcdarts / gdas.
- Weight optimiser: SGD with momentum (optionally Nesterov) and weight decay.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from gaea_ext.optim import ExponentiatedGradient

from .arch_params import ArchParameters
from .darts_space import DartsSuperNet
from .nb201_space import NB201SuperNet
from .search_config import SearchConfig

__all__ = ["arch_modules", "build_arch_optimizer", "build_supernet", "build_weight_optimizer", "set_tau"]


def build_supernet(cfg: SearchConfig, num_classes: int) -> nn.Module:
    """The supernet ``cfg`` describes, for ``num_classes`` classes (on the CPU)."""
    if cfg.space == "nb201":
        return NB201SuperNet(C=cfg.channels, N=cfg.cells, num_classes=num_classes, arch=cfg.arch_kind,
                             exclude_none=cfg.exclude_none, edge_weights=cfg.edge_weights)
    return DartsSuperNet(C=cfg.channels, layers=cfg.layers, num_classes=num_classes,
                         partial_channels=cfg.partial_channels if cfg.partial_channels > 1 else None,
                         edge_weights=cfg.edge_weights, arch=cfg.arch_kind, exclude_none=cfg.exclude_none,
                         tau=cfg.tau_max)


def arch_modules(model: nn.Module) -> List[ArchParameters]:
    """Every :class:`ArchParameters` of ``model`` in registration order (normal, then reduce)."""
    return [m for m in model.modules() if isinstance(m, ArchParameters)]


def set_tau(model: nn.Module, tau: float) -> None:
    """Set the GDAS temperature of every cell type of ``model``."""
    for m in arch_modules(model):
        m.tau = float(tau)


def build_arch_optimizer(cfg: SearchConfig, model: nn.Module) -> torch.optim.Optimizer:
    """EG (GAEA methods) or Adam (the others) over ``model``'s architecture parameters."""
    mods = arch_modules(model)
    if not mods:
        raise ValueError("build_arch_optimizer: the model has no ArchParameters")
    if cfg.arch_optimizer == "adam":
        params = [p for m in mods for p in m.parameters()]
        return torch.optim.Adam(params, lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                weight_decay=cfg.arch_weight_decay)
    groups = [dict(params=[m.alpha for m in mods], lr=cfg.arch_lr, min_value=cfg.min_value,
                   entropic_reg=cfg.entropic_reg, order=cfg.order, segments=None)]
    betas = [m for m in mods if m.beta is not None]
    if betas:
        # one group per segment layout (every cell type of a supernet shares it)
        groups.append(dict(params=[m.beta for m in betas], lr=cfg.edge_lr, min_value=0.0, entropic_reg=0.0,
                           order="clamp_then_normalize", segments=list(betas[0].edge_segments)))
    return ExponentiatedGradient(groups, lr=cfg.arch_lr, adaptive=cfg.adapt_lr)


def build_weight_optimizer(cfg: SearchConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD over the supernet weights at the config's initial LR (the schedule sets it per epoch)."""
    return torch.optim.SGD(model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
