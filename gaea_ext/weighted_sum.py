"""gaea_ext.weighted_sum: the fused mixed-op sum `sum_k weights[k] * inputs[k]`.

Errors (every backend): TypeError for an argument of the wrong type or dtype (a weight that
is not a floating tensor, e.g. a Python float), ValueError for wrong shapes, lengths or devices
(e.g. weights of shape [K, 1] or [2, K]), raised before any kernel runs.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives are exact; the first-order backward runs the kernel.

Kernels: csrc/cpu/weighted_sum_cpu.cpp, csrc/cuda/weighted_sum_cuda.cu.
Reference: gaea_ext.reference.weighted_sum. Tests: tests/test_weighted_sum.py.
"""
from typing import List, Sequence, Union

import torch

from . import reference
from ._autograd import register_weighted_sum_autograd, weighted_sum_backward_fake
from ._backend import HAS_OPS, use_reference
from ._checks import check_weighted_sum
from ._layout import empty_in_layout


def weighted_sum(inputs: Sequence[torch.Tensor],
                 weights: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """Return `sum_k weights[k] * inputs[k]` in one fused pass (differentiable in both).

    `inputs`: K >= 1 tensors of one shape, dtype (float16/bfloat16/float32/float64) and
    device; the output keeps their layout when they share one dense layout (contiguous or
    channels_last). `weights`: K floating elements on the same device, as a 1-D tensor, a
    `[1, K]` row, or a list/tuple of 0-d (or 1-element) tensors (as DARTS' `zip(weights, ops)`
    loops produce them), which are stacked so gradients flow back to each. Half inputs
    accumulate in float32.
    """
    inputs, weights = check_weighted_sum(inputs, weights)
    if use_reference(inputs[0].device):
        return reference.weighted_sum(inputs, weights)
    return torch.ops.gaea_ext.weighted_sum(inputs, weights)


if HAS_OPS:

    @torch.library.register_fake("gaea_ext::weighted_sum")
    def _weighted_sum_fake(inputs: List[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        torch._check(len(inputs) == weights.shape[0], lambda: "weighted_sum: one weight per input")
        return empty_in_layout(inputs)

    torch.library.register_fake("gaea_ext::weighted_sum_backward")(weighted_sum_backward_fake(empty_in_layout))

    register_weighted_sum_autograd("gaea_ext::weighted_sum", reference.weighted_sum,
                                   torch.ops.gaea_ext.weighted_sum_backward)
