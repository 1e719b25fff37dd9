"""gaea_ext.mixed_op / gaea_ext.mixed_node: a mixed op, or a whole node of a cell, with its
parameter-free ops fused.

`out = sum_i weights[i] * f_i(x)` where `f_i` is `"none"`, `"skip"`, `"avg_pool_3x3"`,
`"max_pool_3x3"` (stride 1, padding 1; the average excludes padded cells), `"tensor"` (a
precomputed output such as a conv's), `"avg_pool_3x3_bn"` / `"max_pool_3x3_bn"` (the pool
followed by BatchNorm without affine, given per-channel `[mean, 1/std]` norms, see
:mod:`gaea_ext.pool_stats`) or `"ones"` (a constant 1: GDAS's straight-through terms, whose
gradient is `sum(grad)`). The pools are computed inside the kernel from `x` and never
materialised; the backward saves only the inputs and recomputes them.

Errors (every backend): TypeError for an argument of the wrong type or dtype, ValueError for
wrong shapes, lengths, indices, kinds or devices, raised before any kernel runs.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives (gradient penalties, DARTS' second-order step) are exact; the first-order
backward runs the kernel.

Kernels: csrc/cpu/mixed_node_cpu.cpp, csrc/cuda/mixed_node_cuda.cu (op `gaea_ext::mixed_node`).
Reference: gaea_ext.reference.mixed_node. Tests: tests/test_mixed_node.py.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from . import reference
from ._autograd import by_need, double_backward_enabled, reference_grads
from ._backend import HAS_EXTENSION, use_reference
from ._checks import check_mixed_node, check_norms
from ._layout import empty_like_layout, memory_format_of

KINDS = reference.MIXED_KINDS
BN_KINDS = reference.BN_KINDS
_CODE = {k: i for i, k in enumerate(KINDS)}

Edge = Tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[str]]


def mixed_terms(xs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], weights: torch.Tensor,
                kinds: Sequence[str], sources: Sequence[int],
                norms: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """The flat form: `sum_t weights[t] * term_t` where term `t` is `kinds[t]` of
    `xs[sources[t]]`, or `outputs[sources[t]]` for `"tensor"` (each output used once).

    `xs`, `outputs`: 4-D tensors of one shape, dtype (float16/bfloat16/float32/float64) and
    device; `weights`: one floating element per term; `norms`: one `[2, C]` tensor
    (mean, 1/std per channel, e.g. from :func:`gaea_ext.pool_batch_norm`) per BN term, in
    term order. Differentiable in all four."""
    xs, outputs, weights, kinds, sources = check_mixed_node(xs, outputs, weights, kinds, sources, KINDS)
    norm = check_norms(norms, kinds, BN_KINDS, xs[0])
    if use_reference(xs[0].device, mixed_node_terms=len(kinds), mixed_node_xs=len(xs)):
        return reference.mixed_node(xs, outputs, weights, kinds, sources, norm)
    return torch.ops.gaea_ext.mixed_node(xs, outputs, weights, [_CODE[k] for k in kinds], sources, norm)


def mixed_op(x: torch.Tensor, outputs: Sequence[torch.Tensor], weights: torch.Tensor,
             kinds: Sequence[str], norms: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """One mixed op: `sum_i weights[i] * f_i(x)`; each `"tensor"` kind takes the next tensor
    of `outputs` (e.g. the edge's conv outputs), the other kinds are computed from `x`; each
    BN kind takes the next `[2, C]` tensor of `norms`."""
    return mixed_node([(x, outputs, kinds)], weights, norms)


def mixed_node(edges: Sequence[Edge], weights: torch.Tensor,
               norms: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """A whole node in one call: `edges` is a list of `(x_j, outputs_j, kinds_j)` (as in
    :func:`mixed_op`), `weights` holds one element per kind of every edge, edge by edge (1-D,
    or `[num_edges, num_kinds]`); `norms` one `[2, C]` tensor per BN kind, edge by edge."""
    xs: List[torch.Tensor] = []
    outputs: List[torch.Tensor] = []
    kinds: List[str] = []
    sources: List[int] = []
    for j, edge in enumerate(edges):
        try:
            x, outs, ks = edge
        except (TypeError, ValueError):
            raise TypeError(f"mixed_node: 'edges[{j}]' must be (x, outputs, kinds)") from None
        if isinstance(ks, str):
            raise TypeError(f"mixed_node: 'edges[{j}]' kinds must be a sequence of names, not a string")
        outs = list(outs)
        used = 0
        xs.append(x)
        for k in ks:
            if k == "tensor":
                if used >= len(outs):
                    raise ValueError(f"mixed_node: edge {j} has more 'tensor' kinds than outputs ({len(outs)})")
                sources.append(len(outputs) + used)
                used += 1
            else:
                sources.append(j)
            kinds.append(k)
        if used != len(outs):
            raise ValueError(f"mixed_node: edge {j} has {len(outs)} outputs but {used} 'tensor' kinds")
        outputs.extend(outs)
    if not xs:
        raise ValueError("mixed_node: 'edges' must hold at least one edge")
    return mixed_terms(xs, outputs, weights, kinds, sources, norms)


if HAS_EXTENSION:

    @torch.library.register_fake("gaea_ext::mixed_node")
    def _mixed_node_fake(xs, outputs, weights, kinds, sources, norm=None):
        torch._check(weights.numel() == len(kinds), lambda: "mixed_node: one weight per term")
        return empty_like_layout(xs[0])

    @torch.library.register_fake("gaea_ext::mixed_node_backward")
    def _mixed_node_backward_fake(grad_out, xs, outputs, weights, kinds, sources, norm, xs_need_grad,
                                  outputs_need_grad, weights_need_grad, norm_need_grad):
        gx = [empty_like_layout(x) for x, need in zip(xs, xs_need_grad) if need]
        gy = [empty_like_layout(y) for y, need in zip(outputs, outputs_need_grad) if need]
        gw = weights.new_empty(weights.shape if weights_need_grad else (0,))
        with_norm = norm_need_grad and norm is not None and norm.numel() > 0
        gn = norm.new_empty(norm.shape) if with_norm else weights.new_empty((0,))
        return gx, gy, gw, gn

    def _setup_context(ctx, inputs, output):
        xs, outputs, weights, kinds, sources, norm = inputs
        ctx.kinds, ctx.sources = list(kinds), list(sources)
        ctx.num_xs, ctx.num_outputs = len(xs), len(outputs)
        # The backward reads xs (pool adjoints, dots) and, for the weight gradient only, outputs.
        keep_outputs = weights.requires_grad
        ctx.kept_outputs = keep_outputs
        ctx.has_norm = norm is not None
        ctx.save_for_backward(weights, *((norm,) if norm is not None else ()), *xs,
                              *(outputs if keep_outputs else ()))

    def _backward(ctx, grad_out):
        needs = ctx.needs_input_grad  # no entry for `norm` when the call left it out
        xs_need, outputs_need, weights_need = needs[:3]
        norm_need = len(needs) > 5 and needs[5]
        weights, *rest = ctx.saved_tensors
        norm = rest.pop(0) if ctx.has_norm else None
        xs = rest[:ctx.num_xs]
        if double_backward_enabled():
            # The output is linear in each output tensor: unsaved ones are stood in for by zeros.
            outputs = (rest[ctx.num_xs:] if ctx.kept_outputs
                       else [torch.zeros_like(xs[0]) for _ in range(ctx.num_outputs)])
            kinds = [KINDS[code] for code in ctx.kinds]

            def recompute(xs, outputs, weights, norm):
                return reference.mixed_node(xs, outputs, weights, kinds, ctx.sources, norm)

            gx, gy, gw, gn = reference_grads(recompute, (list(xs), list(outputs), weights, norm),
                                             (list(xs_need), list(outputs_need), weights_need, norm_need), grad_out)
            return (gx, gy, gw, None, None) + (gn,) * (len(needs) - 5)
        outputs = rest[ctx.num_xs:] if ctx.kept_outputs else [grad_out] * ctx.num_outputs
        gx, gy, gw, gn = torch.ops.gaea_ext.mixed_node_backward(
            grad_out.contiguous(memory_format=memory_format_of(xs[0])), list(xs), list(outputs), weights,
            ctx.kinds, ctx.sources, norm, list(xs_need), list(outputs_need), bool(weights_need),
            bool(norm_need and norm is not None))
        grads = (by_need(gx, xs_need), by_need(gy, outputs_need), (gw if weights_need else None), None, None)
        return grads + ((gn if norm_need else None),) * (len(needs) - 5)

    torch.library.register_autograd("gaea_ext::mixed_node", _backward, setup_context=_setup_context)
