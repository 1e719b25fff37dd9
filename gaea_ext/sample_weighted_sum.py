"""gaea_ext.sample_weighted_sum: `out[n] = sum_k weights[k, n] * inputs[k][n]`, a weighted sum
with one weight per input and sample, in one pass (drop path's keep mask / (1 - p) folded into
a cell node's sum: gaea_ext.drop_path_sum).

Weights: a [K, N] floating tensor of any floating dtype; the kernels use it in the
accumulation type (float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs),
so float32 weights are the natural ones for half inputs. Its gradient comes back in its own
dtype.

Layouts: inputs that share a dense layout with the batch outermost (contiguous,
channels_last) are walked as flat storage and the output keeps that layout; other inputs
(non-contiguous views, a transposed batch, mixed layouts) are copied to the first input's
layout when it is channels_last, else made contiguous, and the output takes that layout.

Errors (every backend): TypeError for an argument of the wrong type or dtype, ValueError for
wrong shapes, lengths or devices, raised before any kernel runs.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads); the first-order backward
runs the kernel. The weight gradient is deterministic (fixed chunks, fixed-order sums).

Kernels: csrc/cpu/sample_weighted_sum_cpu.cpp, csrc/kernels/sample_weighted_sum.cuh
(launched by csrc/cuda/sample_weighted_sum_cuda.cu, or by gaea_ext/cupy_backend.py). Reference:
gaea_ext.reference.sample_weighted_sum. Tests: tests/test_sample_weighted_sum.py.
"""
from typing import List, Sequence

import torch

from . import reference
from ._autograd import register_weighted_sum_autograd, weighted_sum_backward_fake
from ._backend import HAS_OPS, use_reference
from ._checks import check_sample_weighted_sum
from ._layout import empty_in_batch_major_layout


def sample_weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Return `out[n] = sum_k weights[k, n] * inputs[k][n]` in one fused pass (differentiable in
    both).

    `inputs`: K >= 1 tensors of one shape [N, ...], dtype (float16/bfloat16/float32/float64)
    and device. `weights`: a floating [K, N] tensor on their device (float32 for half inputs
    is fine: weights are used in the accumulation type). Half inputs accumulate in float32.
    The output keeps a contiguous or channels_last layout shared by the inputs.
    """
    inputs = check_sample_weighted_sum(inputs, weights)
    if use_reference(inputs[0].device):
        return reference.sample_weighted_sum(inputs, weights)
    return torch.ops.gaea_ext.sample_weighted_sum(inputs, weights)


if HAS_OPS:

    @torch.library.register_fake("gaea_ext::sample_weighted_sum")
    def _sample_weighted_sum_fake(inputs: List[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        torch._check(weights.dim() == 2 and weights.shape[0] == len(inputs),
                     lambda: "sample_weighted_sum: one row of weights per input")
        torch._check(weights.shape[1] == inputs[0].shape[0], lambda: "sample_weighted_sum: one weight per sample")
        return empty_in_batch_major_layout(inputs)

    torch.library.register_fake("gaea_ext::sample_weighted_sum_backward")(
        weighted_sum_backward_fake(empty_in_batch_major_layout))

    register_weighted_sum_autograd("gaea_ext::sample_weighted_sum", reference.sample_weighted_sum,
                                   torch.ops.gaea_ext.sample_weighted_sum_backward)
