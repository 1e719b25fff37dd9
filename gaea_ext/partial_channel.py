"""gaea_ext.partial_channel_node: the PC-DARTS node around its mixed part, in one pass.

PC-DARTS runs a node's candidate ops on the first `q = C / K` channels of every input state
(K is the op's `groups` argument)
and passes the other channels through ("bypass", 2x2 max-pooled on a reduction cell's stride-2
edges); each edge is then channel-shuffled and weighted by its edge weight. Since the
concatenation and shuffle are fixed linear maps, a node is

    out = shuffle(cat([mixed, sum_e weights[e] * tail_e]), K),

`mixed` being the node's op mixing over the q-channel slices (edge weights folded in, e.g.
one `gaea_ext.mixed_terms` call). This op writes the bypass sum straight into the shuffled
positions next to `mixed`: no per-edge bypass, cat or shuffle tensor is made.

Errors (every backend): TypeError for an argument of the wrong type or dtype, ValueError for
wrong shapes, lengths, strides, groups or devices, raised before any kernel runs.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives are exact; the first-order backward runs the kernel.

Kernels: csrc/cpu/partial_channel_cpu.cpp, csrc/cuda/partial_channel_cuda.cu (op
`gaea_ext::partial_channel_node`). Reference: gaea_ext.reference.partial_channel_node.
Tests: tests/test_partial_channel.py.
"""
from typing import Sequence

import torch

from . import reference
from ._autograd import by_need, double_backward_enabled, reference_grads
from ._backend import HAS_OPS, use_reference
from ._checks import check_partial_channel_node
from ._layout import empty_like_layout, memory_format_of


def partial_channel_node(mixed: torch.Tensor, states: Sequence[torch.Tensor], weights: torch.Tensor,
                         strides: Sequence[int], groups: int) -> torch.Tensor:
    """`shuffle(cat([mixed, sum_e weights[e] * tail_e]), groups)`, `tail_e = states[e][:, q:]`
    (its 2x2 stride-2 max pool when `strides[e] == 2`), `q = mixed.shape[1] = C / groups`.

    `groups` is PC-DARTS' K (its `k = 4` for CIFAR-10): the candidate ops run on the first
    C/K channels of each state, the other channels bypass them, and the result is channel-
    shuffled with K groups. `mixed` is [N, C/K, Ho, Wo] (the node's mixed ops on those
    channels, edge weights folded in); `states[e]` [N, C, H_e, W_e]; `weights` [E], the
    (normalised) edge weights. Differentiable in all three.
    """
    states, strides = check_partial_channel_node(mixed, states, weights, strides, groups)
    if use_reference(mixed.device, partial_channel_states=len(states)):
        return reference.partial_channel_node(mixed, states, weights, strides, groups)
    return torch.ops.gaea_ext.partial_channel_node(mixed, states, weights, strides, groups)


if HAS_OPS:

    @torch.library.register_fake("gaea_ext::partial_channel_node")
    def _partial_channel_node_fake(mixed, states, weights, strides, groups):
        n, q, ho, wo = mixed.shape
        return mixed.new_empty((n, q * groups, ho, wo)).contiguous(memory_format=memory_format_of(mixed))

    @torch.library.register_fake("gaea_ext::partial_channel_node_backward")
    def _partial_channel_node_backward_fake(grad_out, states, weights, strides, groups, mixed_need_grad,
                                            states_need_grad, weights_need_grad):
        n, c, ho, wo = grad_out.shape
        gm = grad_out.new_empty((n, c // groups, ho, wo)) if mixed_need_grad else grad_out.new_empty((0,))
        gs = [empty_like_layout(s) for s, need in zip(states, states_need_grad) if need]
        gw = weights.new_empty(weights.shape if weights_need_grad else (0,))
        return gm, gs, gw

    def _setup_context(ctx, inputs, output):
        mixed, states, weights, strides, groups = inputs
        ctx.strides, ctx.groups = list(strides), groups
        ctx.save_for_backward(weights, *states)

    def _backward(ctx, grad_out):
        mixed_need, states_need, weights_need = ctx.needs_input_grad[:3]
        weights, *states = ctx.saved_tensors
        if double_backward_enabled():
            # The output is linear in `mixed` (not saved): zeros of its shape stand in for it.
            n, c, ho, wo = grad_out.shape
            mixed = grad_out.new_zeros((n, c // ctx.groups, ho, wo))

            def recompute(mixed, states, weights):
                return reference.partial_channel_node(mixed, states, weights, ctx.strides, ctx.groups)

            gm, gs, gw = reference_grads(recompute, (mixed, list(states), weights),
                                         (mixed_need, list(states_need), weights_need), grad_out)
            return gm, gs, gw, None, None
        gm, gs, gw = torch.ops.gaea_ext.partial_channel_node_backward(
            grad_out.contiguous(), list(states), weights, ctx.strides, ctx.groups, bool(mixed_need),
            list(states_need), bool(weights_need))
        return (gm if mixed_need else None), by_need(gs, states_need), (gw if weights_need else None), None, None

    torch.library.register_autograd("gaea_ext::partial_channel_node", _backward, setup_context=_setup_context)
