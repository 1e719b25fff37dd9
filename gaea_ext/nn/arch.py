"""Helpers for porting a DARTS-style search: op names to kernel kinds, simplex initialisation
of architecture parameters, per-node edge-weight segments and architecture-only gradients."""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .modules import node_sizes

__all__ = ["PRIMITIVES", "darts_kind", "darts_kinds", "node_segments", "init_simplex_", "simplex_parameter",
           "arch_grads"]

#: The DARTS / PC-DARTS / GAEA candidate ops, in their repositories' order.
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")


def darts_kind(name: str, stride: int = 1, search: bool = True) -> str:
    """The kernel kind of DARTS op `name` on an edge of `stride`: ``none`` is ``"none"`` at
    both strides; at stride 1 ``skip_connect`` is ``"skip"`` and the pools are
    ``"max_pool_3x3_bn"`` / ``"avg_pool_3x3_bn"`` in a search cell (the pool followed by
    ``BatchNorm2d(affine=False)``, ``search=True``) or the bare pool kinds; everything else,
    and every op but ``none`` at stride 2, is ``"tensor"`` (runs as a module)."""
    if name not in PRIMITIVES:
        raise ValueError(f"darts_kind: unknown DARTS op {name!r}; expected one of {PRIMITIVES}")
    if stride not in (1, 2):
        raise ValueError(f"darts_kind: 'stride' must be 1 or 2, got {stride!r}")
    if name == "none":
        return "none"
    if stride == 2:
        return "tensor"
    if name == "skip_connect":
        return "skip"
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return name + "_bn" if search else name
    return "tensor"


def darts_kinds(names: Sequence[str] = PRIMITIVES, stride: int = 1, search: bool = True) -> List[str]:
    """:func:`darts_kind` of every name."""
    if isinstance(names, str):
        raise TypeError("darts_kinds: 'names' must be a sequence of op names, not a string")
    return [darts_kind(n, stride, search) for n in names]


def node_segments(steps: int = 4, num_inputs: int = 2) -> List[int]:
    """The per-node segments of a cell's edge-weight vector (PC-DARTS' / GAEA's beta), node by
    node: ``[2, 3, 4, 5]`` for the 4-node DARTS cell. Pass them as ``segments`` to
    :func:`gaea_ext.exp_grad_step_` / :class:`gaea_ext.optim.ExponentiatedGradient`."""
    return node_sizes(steps, num_inputs)


def init_simplex_(param: torch.Tensor, segments: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Fill `param` in place with uniform simplices along its last dimension (``1/K`` per row,
    or ``1/len`` within each of `segments`); returns it. No gradient is recorded."""
    if not isinstance(param, torch.Tensor) or not param.is_floating_point() or param.dim() < 1:
        raise TypeError("init_simplex_: 'param' must be a floating-point tensor with at least one dimension")
    n = param.shape[-1]
    segs = [n] if segments is None else [int(s) for s in segments]
    if any(s < 1 for s in segs) or sum(segs) != n:
        raise ValueError(f"init_simplex_: 'segments' must be positive lengths summing to the last dimension ({n}), "
                         f"got {list(segments)}")
    with torch.no_grad():
        for piece, s in zip(param.split(segs, dim=-1), segs):
            piece.fill_(1.0 / s)
    return param


def simplex_parameter(*shape: int, segments: Optional[Sequence[int]] = None, dtype: Optional[torch.dtype] = None,
                      device=None) -> nn.Parameter:
    """A new architecture parameter of `shape` on the simplex: ``simplex_parameter(14, 8)`` is
    GAEA's op weights (every row 1/8), ``simplex_parameter(14, segments=node_segments(4))`` its
    per-node edge weights ([1/2]*2 + [1/3]*3 + [1/4]*4 + [1/5]*5)."""
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"simplex_parameter: 'shape' must be positive ints, got {shape}")
    p = torch.empty(shape, dtype=dtype, device=device)
    return nn.Parameter(init_simplex_(p, segments))


def arch_grads(loss: torch.Tensor, arch_params: Sequence[torch.Tensor], *, retain_graph: bool = False,
               accumulate: bool = False) -> List[Optional[torch.Tensor]]:
    """Backpropagate `loss` to the architecture parameters only (``torch.autograd.grad``): the
    network weights' gradients are never computed, nor written. Each parameter's ``.grad`` is
    set (added to with ``accumulate=True``); a parameter the loss does not depend on gets a
    zero gradient. Returns the gradients."""
    params = list(arch_params)
    if not params:
        raise ValueError("arch_grads: 'arch_params' must hold at least one tensor")
    for k, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(f"arch_grads: 'arch_params[{k}]' must be a tensor that requires grad")
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    out = []
    for p, g in zip(params, grads):
        if g is None:
            g = torch.zeros_like(p)
        if accumulate and p.grad is not None:
            p.grad.add_(g)
        else:
            p.grad = g
        out.append(p.grad)
    return out
