"""gaea_ext.mixed_op / gaea_ext.mixed_node: a mixed op, or a whole node of a cell, with its
parameter-free ops fused.

`out = sum_i weights[i] * f_i(x)` where `f_i` is `"none"`, `"skip"`, `"avg_pool_3x3"`,
`"max_pool_3x3"` (stride 1, padding 1; the average excludes padded cells), `"tensor"` (a
precomputed output such as a conv's), `"avg_pool_3x3_bn"` / `"max_pool_3x3_bn"` (the pool
followed by BatchNorm without affine, see below), `"ones"` (a constant 1: GDAS's
straight-through terms, whose gradient is `sum(grad)`) or `"tensor_bn"` (a precomputed output
followed by BatchNorm without affine, e.g. a conv op ending in `BatchNorm2d(affine=False)`).
The pools are computed inside the kernel from `x` and never materialised, nor are the
normalised pools and outputs; the backward saves only the inputs and recomputes them.

Porting DARTS code: the kinds are these names, not DARTS' op names. Ops with parameters
(`sep_conv_3x3`, `dil_conv_5x5`, a stride-2 `skip_connect`'s FactorizedReduce, ...) run as
modules and go in as `"tensor"` terms (their outputs in `outputs`); `skip_connect` of stride 1
is `"skip"`. A pool that DARTS' search space follows by `BatchNorm2d(C, affine=False)` (its
`avg_pool_3x3` / `max_pool_3x3` are `nn.Sequential(pool, BatchNorm2d)`) is the `_bn` kind: the
plain pool kinds have no BatchNorm, and the op cannot tell that a module had one. `weights` may
be a 1-D tensor, a `[1, K]` row (or `[edges, ops]` for a node), or a list/tuple of 0-d tensors,
stacked with gradients flowing to each.

BN kinds (the `_bn` pools and `"tensor_bn"`): `norms` holds, per BN term in term order, either
the term's `BatchNorm2d(affine=False)` module, which the op applies itself through
:func:`gaea_ext.pool_batch_norm` on that term's input (:func:`gaea_ext.tensor_batch_norm` on a
`"tensor_bn"` term's output) (batch statistics and the running statistics' update in
training mode, the running statistics in eval mode, exactly as the module would after the
pool or conv), or a precomputed `[2, C]` tensor of mean and 1/std, e.g. the slice
`norm[:, off:off + C]` of one `tensor_batch_norm` of a batched conv output. The backward
returns the norm's gradient, so autograd reaches the statistics (and through them the input).
Passing the modules leaves nothing to compute in the right order by hand. A BatchNorm with
affine=True is refused (the kernels take the mean and 1/std only).

Layouts: `outputs` are read in place with their own strides when each plane's cells are
evenly spaced: contiguous or channels_last tensors and their channel slices, e.g. the edges'
shares `Y[:, e * C:(e + 1) * C]` of one batched conv output `Y` (no copy, forward or
backward); other layouts are copied. `x` is read as contiguous NCHW (copied otherwise), and a
channels_last `x` gives a channels_last result.

Errors (every backend) name the function called (`mixed_op`, `mixed_node`, `mixed_terms`) and
the argument: TypeError for an argument of the wrong type or dtype, ValueError for wrong
shapes, lengths, indices, kinds or devices, raised before any kernel runs (and before any
BatchNorm's running statistics change). An unknown kind is reported first, with the valid kinds.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives (gradient penalties, DARTS' second-order step) are exact; the first-order
backward runs the kernel.

Kernels: csrc/cpu/mixed_node_cpu.cpp, csrc/cuda/mixed_node_cuda.cu (op `gaea_ext::mixed_node`).
Reference: gaea_ext.reference.mixed_node. Tests: tests/test_mixed_node.py, tests/test_pool_batch_norm.py,
tests/test_tensor_bn.py.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from . import reference
from ._autograd import by_need, double_backward_enabled, reference_grads
from ._backend import HAS_OPS, use_reference
from ._checks import check_kinds, check_mixed_node, check_norms
from ._layout import empty_like_layout, memory_format_of
from .pool_stats import pool_batch_norm, tensor_batch_norm

KINDS = reference.MIXED_KINDS
BN_KINDS = reference.BN_KINDS
OUTPUT_KINDS = reference.OUTPUT_KINDS
_CODE = {k: i for i, k in enumerate(KINDS)}

Edge = Tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[str]]
Weights = Union[torch.Tensor, Sequence[torch.Tensor]]
Norms = Optional[Sequence[Union[torch.Tensor, torch.nn.Module]]]


def mixed_terms(xs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], weights: Weights,
                kinds: Sequence[str], sources: Sequence[int], norms: Norms = None) -> torch.Tensor:
    """The flat form: `sum_t weights[t] * term_t` where term `t` is `kinds[t]` of
    `xs[sources[t]]`, or `outputs[sources[t]]` for `"tensor"` / `"tensor_bn"` (each output
    used once).

    `xs`, `outputs`: 4-D tensors of one shape, dtype (float16/bfloat16/float32/float64) and
    device; `weights`: one floating element per term (1-D, 2-D, or a list of 0-d tensors);
    `norms`: per BN term, in term order, its `BatchNorm2d(affine=False)` module (applied to
    that term's input by :func:`gaea_ext.pool_batch_norm`, or to a `"tensor_bn"` term's
    output by :func:`gaea_ext.tensor_batch_norm`) or a `[2, C]` tensor (mean, 1/std per
    channel). Differentiable in xs, outputs, weights and tensor norms."""
    return _mixed_terms("mixed_terms", xs, outputs, weights, kinds, sources, norms)


def mixed_op(x: torch.Tensor, outputs: Sequence[torch.Tensor], weights: Weights,
             kinds: Sequence[str], norms: Norms = None) -> torch.Tensor:
    """One mixed op: `sum_i weights[i] * f_i(x)`; each `"tensor"` or `"tensor_bn"` kind takes
    the next tensor of `outputs` (e.g. the edge's conv outputs), the other kinds are computed
    from `x`; each
    BN kind takes the next entry of `norms` (its BatchNorm2d(affine=False) module, or a
    `[2, C]` mean/1-std tensor). `weights`: one element per kind, as a 1-D tensor, a `[1, K]`
    row or a list of 0-d tensors.

    Kinds are not DARTS' op names: a conv (`sep_conv_3x3`, ...) is a `"tensor"` kind with its
    output in `outputs`; a stride-1 `skip_connect` is `"skip"`. A pool followed by
    `BatchNorm2d(affine=False)` (DARTS' search-time pools) must be given as the `_bn` kind
    with that module in `norms`: `"max_pool_3x3"` is the bare pool, and the op cannot detect
    that the module it stands for had a BatchNorm."""
    op = "mixed_op"
    kinds = check_kinds(kinds, KINDS, op)
    outs = _outputs(outputs, op, "'outputs'")
    sources = _sources(kinds, outs, 0, 0, op, "")
    return _mixed_terms(op, [x], outs, weights, kinds, sources, norms,
                        x_labels=["x"], output_labels=[f"outputs[{i}]" for i in range(len(outs))])


def mixed_node(edges: Sequence[Edge], weights: Weights, norms: Norms = None) -> torch.Tensor:
    """A whole node in one call: `edges` is a list of `(x_j, outputs_j, kinds_j)` (as in
    :func:`mixed_op`), `weights` holds one element per kind of every edge, edge by edge (1-D,
    `[num_edges, num_kinds]`, or a list of 0-d tensors); `norms` one entry per BN kind, edge
    by edge (a BatchNorm2d(affine=False) module or a `[2, C]` tensor)."""
    op = "mixed_node"
    if isinstance(edges, torch.Tensor):
        raise TypeError(f"{op}: 'edges' must be a sequence of (x, outputs, kinds), not a tensor")
    try:
        edges = list(edges)
    except TypeError:
        raise TypeError(f"{op}: 'edges' must be a sequence of (x, outputs, kinds), got {type(edges).__name__}") from None
    parsed = []
    for j, edge in enumerate(edges):  # every kind name first
        try:
            x, outs, ks = edge
        except (TypeError, ValueError):
            raise TypeError(f"{op}: 'edges[{j}]' must be (x, outputs, kinds)") from None
        parsed.append((x, outs, check_kinds(ks, KINDS, op, f"edges[{j}] ")))
    if not parsed:
        raise ValueError(f"{op}: 'edges' must hold at least one edge")
    xs: List[torch.Tensor] = []
    outputs: List[torch.Tensor] = []
    kinds: List[str] = []
    sources: List[int] = []
    x_labels: List[str] = []
    output_labels: List[str] = []
    for j, (x, outs, ks) in enumerate(parsed):
        outs = _outputs(outs, op, f"edges[{j}] 'outputs'")
        sources += _sources(ks, outs, j, len(outputs), op, f"edges[{j}] ")
        xs.append(x)
        x_labels.append(f"edges[{j}][0]")
        output_labels += [f"edges[{j}][1][{i}]" for i in range(len(outs))]
        outputs += outs
        kinds += ks
    return _mixed_terms(op, xs, outputs, weights, kinds, sources, norms, x_labels, output_labels)


def _outputs(outputs, op: str, what: str) -> list:
    if isinstance(outputs, torch.Tensor):
        raise TypeError(f"{op}: {what} must be a sequence of tensors, not a tensor (write [y] for one output)")
    try:
        return list(outputs)
    except TypeError:
        raise TypeError(f"{op}: {what} must be a sequence of tensors, got {type(outputs).__name__}") from None


def _sources(kinds: List[str], outs: list, x_index: int, first_output: int, op: str, where: str) -> List[int]:
    """Each "tensor" or "tensor_bn" kind takes the next output; the other kinds read xs[x_index]."""
    wanted = sum(k in OUTPUT_KINDS for k in kinds)
    if wanted > len(outs):
        raise ValueError(f"{op}: {where}'kinds' has more 'tensor' kinds ({wanted}, 'tensor_bn' included) than "
                         f"'outputs' has tensors ({len(outs)}); each 'tensor' or 'tensor_bn' kind takes the next output")
    if wanted < len(outs):
        raise ValueError(f"{op}: {where}'outputs' holds {len(outs)} outputs but {wanted} 'tensor'/'tensor_bn' kinds "
                         f"take them; each output (a module op's result) needs its own 'tensor' or 'tensor_bn' kind")
    sources, used = [], 0
    for k in kinds:
        if k in OUTPUT_KINDS:
            sources.append(first_output + used)
            used += 1
        else:
            sources.append(x_index)
    return sources


def _mixed_terms(op: str, xs, outputs, weights, kinds, sources, norms,
                 x_labels: Optional[List[str]] = None, output_labels: Optional[List[str]] = None) -> torch.Tensor:
    xs, outputs, weights, kinds, sources = check_mixed_node(xs, outputs, weights, kinds, sources, KINDS, op,
                                                            x_labels, output_labels)
    entries = check_norms(norms, kinds, BN_KINDS, xs[0], op, x_labels[0] if x_labels else "xs[0]")
    norm = _norm_tensor(entries, xs, outputs, kinds, sources)
    if use_reference(xs[0].device, mixed_node_terms=len(kinds), mixed_node_xs=len(xs)):
        return reference.mixed_node(xs, outputs, weights, kinds, sources, norm)
    return torch.ops.gaea_ext.mixed_node(xs, outputs, weights, [_CODE[k] for k in kinds], sources, norm)


def _norm_tensor(entries: Optional[list], xs: List[torch.Tensor], outputs: List[torch.Tensor], kinds: List[str],
                 sources: List[int]) -> Optional[torch.Tensor]:
    """The `[B, 2, C]` norm of the B BN terms; a BatchNorm module's row is the norm it applies
    to its term's pool or output (pool_batch_norm / tensor_batch_norm, which also update its
    running statistics)."""
    if entries is None:
        return None
    acc = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    bn_terms = [t for t, k in enumerate(kinds) if k in BN_KINDS]
    rows = []
    for t, entry in zip(bn_terms, entries):
        if isinstance(entry, torch.nn.Module) and kinds[t] == "tensor_bn":
            entry = tensor_batch_norm(outputs[sources[t]], entry)
        elif isinstance(entry, torch.nn.Module):
            entry = pool_batch_norm(xs[sources[t]], kinds[t], entry)
        rows.append(entry.to(acc))
    return torch.stack(rows)


if HAS_OPS:

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
        # The backward reads xs (pool adjoints, dots) and, for the weight gradient and the norm
        # gradient of "tensor_bn" terms only, outputs.
        tensor_bn = _CODE["tensor_bn"]
        keep_outputs = weights.requires_grad or (norm is not None and norm.requires_grad and tensor_bn in kinds)
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
