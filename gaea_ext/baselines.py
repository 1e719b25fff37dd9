"""The eager PyTorch baselines that the profiler (gaea_ext.bench) and benchmarks/ time the
fused ops against: how the DARTS / GAEA repositories write the same maths, op by op.

They are for timing, not correctness (gaea_ext.reference defines what the ops compute);
tests/test_baselines.py checks that they compute what they are compared with.
"""
from typing import Sequence

import torch
import torch.nn.functional as F


def eager_weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The DARTS-family MixedOp sum: `sum(w * y for w, y in zip(weights, inputs))`."""
    return sum(w * y for w, y in zip(weights, inputs))


def eager_nb201_node(xs, convs, w):
    """An NB201 node (ops none, skip, two convs, 3x3 avg pool per edge) the eager way: every
    op materialised (`none` as `x * 0`, the avg pool as a tensor), then `sum(w * op(x))`."""
    terms = []
    for e, x in enumerate(xs):
        ys = [x * 0.0, x, convs[e][0], convs[e][1], F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)]
        terms.extend(w[e, k] * y for k, y in enumerate(ys))
    return sum(terms)


def eager_darts_node(xs, convs, w, bns):
    """A DARTS search node (ops none, max pool + BN, avg pool + BN, skip, four convs per edge)
    the eager way: `none` as `x * 0`, each pool materialised and normalised by its
    BatchNorm2d(affine=False) `bns[e]`, then `sum(w * op(x))`."""
    terms = []
    for e, x in enumerate(xs):
        ys = [x * 0.0, bns[e][0](F.max_pool2d(x, 3, 1, 1)),
              bns[e][1](F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)), x, *convs[e]]
        terms.extend(w[e, k] * y for k, y in enumerate(ys))
    return sum(terms)


@torch.no_grad()
def exp_grad_step_release(param: torch.Tensor, grad: torch.Tensor, lr: float, *, min_value: float = 1e-5) -> torch.Tensor:
    """The released GAEA alpha update (architect_edarts.py), in place: multiply, clamp, normalise."""
    param.mul_(torch.exp(-lr * grad))
    param.clamp_(min=min_value)
    param.div_(param.sum(dim=-1, keepdim=True))
    return param


@torch.no_grad()
def edge_step_release(beta: torch.Tensor, grad: torch.Tensor, lr: float, segments: Sequence[int]) -> torch.Tensor:
    """The released GAEA edge-weight update, in place: multiply, then a Python loop that
    renormalises each node's incoming edges (no clamp)."""
    beta.mul_(torch.exp(-lr * grad))
    start = 0
    for length in segments:
        node = beta[..., start : start + length]
        node.div_(node.sum(dim=-1, keepdim=True))
        start += length
    return beta
