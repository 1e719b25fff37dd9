"""gaea_ext.mixed_op / gaea_ext.mixed_node: a mixed op, or a whole node of a cell, with its
parameter-free ops fused.

`out = sum_i weights[i] * f_i(x)` where `f_i` is `"none"`, `"skip"`, `"avg_pool_3x3"`,
`"max_pool_3x3"` (stride 1, padding 1; the average excludes padded cells) or `"tensor"` (a
precomputed output such as a conv's). The pools are computed inside the kernel from `x` and
never materialised; the backward saves only the inputs and recomputes them.

Kernels: csrc/cpu/mixed_node_cpu.cpp, csrc/cuda/mixed_node_cuda.cu (op `gaea_ext::mixed_node`).
Reference: gaea_ext.reference.mixed_node. Tests: tests/test_mixed_node.py.
"""
from typing import List, Sequence, Tuple

import torch

from . import reference
from ._backend import HAS_EXTENSION, backend
from ._checks import check_mixed_node

KINDS = reference.MIXED_KINDS
_CODE = {k: i for i, k in enumerate(KINDS)}
# The CUDA kernel takes this many terms and xs per call (a DARTS node has 40 terms).
_CUDA_MAX_TERMS, _CUDA_MAX_XS = 64, 16

Edge = Tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[str]]


def mixed_terms(xs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], weights: torch.Tensor,
                kinds: Sequence[str], sources: Sequence[int]) -> torch.Tensor:
    """The flat form: `sum_t weights[t] * term_t` where term `t` is `kinds[t]` of
    `xs[sources[t]]`, or `outputs[sources[t]]` for `"tensor"` (each output used once).

    `xs`, `outputs`: 4-D tensors of one shape, dtype (float16/bfloat16/float32/float64) and
    device; `weights`: one floating element per term. Differentiable in all three."""
    xs, outputs, weights, kinds, sources = check_mixed_node(xs, outputs, weights, kinds, sources, KINDS)
    dev = xs[0].device
    if backend(dev) == "reference" or (dev.type == "cuda" and (len(kinds) > _CUDA_MAX_TERMS or len(xs) > _CUDA_MAX_XS)):
        return reference.mixed_node(xs, outputs, weights, kinds, sources)
    return torch.ops.gaea_ext.mixed_node(xs, outputs, weights, [_CODE[k] for k in kinds], sources)


def mixed_op(x: torch.Tensor, outputs: Sequence[torch.Tensor], weights: torch.Tensor,
             kinds: Sequence[str]) -> torch.Tensor:
    """One mixed op: `sum_i weights[i] * f_i(x)`; each `"tensor"` kind takes the next tensor
    of `outputs` (e.g. the edge's conv outputs), the other kinds are computed from `x`."""
    return mixed_node([(x, outputs, kinds)], weights)


def mixed_node(edges: Sequence[Edge], weights: torch.Tensor) -> torch.Tensor:
    """A whole node in one call: `edges` is a list of `(x_j, outputs_j, kinds_j)` (as in
    :func:`mixed_op`), `weights` holds one element per kind of every edge, edge by edge (1-D,
    or `[num_edges, num_kinds]`)."""
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
    return mixed_terms(xs, outputs, weights, kinds, sources)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


if HAS_EXTENSION:

    @torch.library.register_fake("gaea_ext::mixed_node")
    def _mixed_node_fake(xs, outputs, weights, kinds, sources):
        torch._check(weights.numel() == len(kinds), lambda: "mixed_node: one weight per term")
        return torch.empty_like(xs[0], memory_format=_layout_of(xs[0]))

    @torch.library.register_fake("gaea_ext::mixed_node_backward")
    def _mixed_node_backward_fake(grad_out, xs, outputs, weights, kinds, sources, xs_need_grad,
                                  outputs_need_grad, weights_need_grad):
        gx = [torch.empty_like(x, memory_format=_layout_of(x)) for x, need in zip(xs, xs_need_grad) if need]
        gy = [torch.empty_like(y, memory_format=_layout_of(y)) for y, need in zip(outputs, outputs_need_grad) if need]
        gw = weights.new_empty(weights.shape if weights_need_grad else (0,))
        return gx, gy, gw

    def _setup_context(ctx, inputs, output):
        xs, outputs, weights, kinds, sources = inputs
        ctx.kinds, ctx.sources = list(kinds), list(sources)
        ctx.num_xs, ctx.num_outputs = len(xs), len(outputs)
        # The backward reads xs (pool adjoints, dots) and, for the weight gradient only, outputs.
        keep_outputs = weights.requires_grad
        ctx.kept_outputs = keep_outputs
        ctx.save_for_backward(weights, *xs, *(outputs if keep_outputs else ()))

    def _backward(ctx, grad_out):
        xs_need, outputs_need, weights_need = ctx.needs_input_grad[:3]
        weights, *rest = ctx.saved_tensors
        xs = rest[:ctx.num_xs]
        outputs = rest[ctx.num_xs:] if ctx.kept_outputs else [grad_out] * ctx.num_outputs
        gx, gy, gw = torch.ops.gaea_ext.mixed_node_backward(
            grad_out.contiguous(memory_format=_layout_of(xs[0])), list(xs), list(outputs), weights,
            ctx.kinds, ctx.sources, list(xs_need), list(outputs_need), bool(weights_need))
        it_x, it_y = iter(gx), iter(gy)
        grad_xs = [next(it_x) if need else None for need in xs_need]
        grad_outputs = [next(it_y) if need else None for need in outputs_need]
        return grad_xs, grad_outputs, (gw if weights_need else None), None, None

    torch.library.register_autograd("gaea_ext::mixed_node", _backward, setup_context=_setup_context)
