"""Build a search's supernet and optimisers from a :class:`~gaea_nas.search.config.SearchConfig`.

- Supernet: the space's supernet class (:data:`gaea_nas.spaces.SUPERNETS`) built by its
  ``from_config``, with the method's architecture parameterisation (``cfg.arch_kind``).
- Architecture optimiser: ``ExponentiatedGradient`` for the GAEA methods (op weights with the
  clamp floor, order and entropic regulariser of the config; edge weights per node with
  ``edge_lr`` and no clamp), Adam on the logits for darts / pcdarts / gdas.
- Weight optimiser: SGD with momentum (optionally Nesterov) and weight decay.
"""
from __future__ import annotations

import torch

from gaea_ext.optim import ExponentiatedGradient

from ..spaces import SuperNet, supernet_class
from .config import SearchConfig

__all__ = ["build_arch_optimizer", "build_supernet", "build_weight_optimizer"]


def build_supernet(cfg: SearchConfig, num_classes: int) -> SuperNet:
    """The supernet ``cfg`` describes, for ``num_classes`` classes (on the CPU)."""
    return supernet_class(cfg.space).from_config(cfg, num_classes)


def build_arch_optimizer(cfg: SearchConfig, model: SuperNet) -> torch.optim.Optimizer:
    """EG (GAEA methods) or Adam (the others) over ``model``'s architecture parameters."""
    mods = list(model.arch_cells().values())
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


def build_weight_optimizer(cfg: SearchConfig, model: SuperNet) -> torch.optim.SGD:
    """SGD over the supernet weights at the config's initial LR (the schedule sets it per epoch)."""
    return torch.optim.SGD(model.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
