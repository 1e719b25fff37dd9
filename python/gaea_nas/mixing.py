"""Node mixing on the fused op: one ``gaea_ext.weighted_sum`` call per node over all its
incoming edges and ops (../shared/docs/method.md section 3).

``mix_node(xs, edge_ops, op_weights, edge_weights=None, op_names=..., sampled=None)``:

- ``xs[e]``: the input tensor of incoming edge ``e``; ``edge_ops[e]``: that edge's candidate
  ops (a sequence of modules aligned with ``op_names``); ``op_weights``: ``[E, num_ops]`` rows
  of this node's edges; ``edge_weights``: ``[E]`` or None.
- Weight of op ``o`` on edge ``e``: ``op_weights[e, o] * edge_weights[e]``.
- ``none`` contributes nothing (the op is never called, no zero tensor is made);
  ``skip_connect`` at stride 1 is ``nn.Identity`` and passes the input tensor itself.
- GDAS (``sampled`` = op index per edge, from ``ArchParameters.sampled_indices()``): only the
  sampled op of each edge runs; ``out = sum_e h[e, i_e] * op_{i_e}(x_e) + sum_e sum_{o != i_e} h[e, o]``
  (times the edge weight); the second sum is 0-valued but carries gradient to every op weight.
- Parameter-free ops (``skip_connect`` as ``nn.Identity``, stride-1 3x3 ``avg_pool`` without
  padded cells and ``max_pool``, alone or followed by ``BatchNorm2d(affine=False)`` as in the
  DARTS search cells) are not called at all: with ``FUSE_PARAMETER_FREE`` (default) the node
  is one ``gaea_ext.mixed_terms`` call that computes them inside the kernel from the edge
  inputs (the BatchNorm's batch statistics come from ``gaea_ext.pool_batch_norm``, which
  keeps the module's running statistics), so no pooled tensor is ever materialised; the
  ReLU-Conv-BN ops of one edge share one ReLU(x); a reduction cell's stride-2 edges join as
  precomputed terms. GDAS nodes are one call too: the sampled terms plus the 0-valued rest as
  a ``"ones"`` term, whose backward is ``sum(grad)``. Nodes with nothing to fuse use one
  ``gaea_ext.weighted_sum`` over the op outputs.
- ``use_fused=False`` (or module-level ``USE_FUSED = False``) computes the plain PyTorch sum
  ``sum(w * op(x))`` instead, for comparison.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import gaea_ext

USE_FUSED = True  # module-level switch: False = plain PyTorch path everywhere
FUSE_PARAMETER_FREE = True  # False: call the parameter-free ops and mix with weighted_sum

__all__ = ["FUSE_PARAMETER_FREE", "USE_FUSED", "fused_kind", "mix_node", "is_none_op", "none_mask"]


def _is_3x3_s1(pool) -> bool:
    k, st, pad = pool.kernel_size, pool.stride, pool.padding
    as_pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return as_pair(k) == (3, 3) and as_pair(st) == (1, 1) and as_pair(pad) == (1, 1)


def fused_kind(op: nn.Module) -> str:
    """The ``gaea_ext.mixed_terms`` kind that computes ``op`` inside the kernel (``"skip"``,
    ``"avg_pool_3x3"``, ``"max_pool_3x3"``, or ``"avg_pool_3x3_bn"`` / ``"max_pool_3x3_bn"``
    for such a pool followed by ``BatchNorm2d(affine=False)``, the DARTS search pools), or
    ``"tensor"`` when the op must run itself."""
    if isinstance(op, nn.Identity):
        return "skip"
    if isinstance(op, nn.Sequential) and len(op) == 2 and type(op[1]) is nn.BatchNorm2d and not op[1].affine:
        base = fused_kind(op[0])
        return base + "_bn" if base in ("avg_pool_3x3", "max_pool_3x3") else "tensor"
    inner = op
    if getattr(op, "preprocess", False) is None and isinstance(getattr(op, "op", None), nn.AvgPool2d):
        inner = op.op  # NB201's Pooling without its 1x1 preprocess
    if isinstance(inner, nn.AvgPool2d) and _is_3x3_s1(inner) and not inner.count_include_pad \
            and not inner.ceil_mode and inner.divisor_override is None:
        return "avg_pool_3x3"
    if isinstance(inner, nn.MaxPool2d) and _is_3x3_s1(inner) and inner.dilation in (1, (1, 1)) \
            and not inner.ceil_mode and not inner.return_indices:
        return "max_pool_3x3"
    return "tensor"


def _run_sharing_relu(op: nn.Module, x: torch.Tensor, relu_x: List[torch.Tensor]) -> torch.Tensor:
    """``op(x)``; an ``nn.Sequential`` starting with a (not in-place) ReLU reuses the edge's
    ReLU(x), so the convs of one edge keep one ReLU output for the backward, not one each."""
    if isinstance(op, nn.Sequential) and len(op) > 1 and type(op[0]) is nn.ReLU and not op[0].inplace:
        if not relu_x:
            relu_x.append(torch.relu(x))
        h = relu_x[0]
        for m in list(op)[1:]:
            h = m(h)
        return h
    return op(x)


def _mix_fused_terms(xs, edge_ops, pairs, w_terms, rest=None) -> Optional[torch.Tensor]:
    """The node as one mixed_terms call over the terms ``pairs`` = [(edge, op), ...] with
    weights ``w_terms``, plus GDAS's 0-valued ``rest`` as a ``"ones"`` term; or None when it
    does not fit (outputs of different shapes, or nothing to fuse). Stride-2 edges (a
    reduction cell's) run all their ops as modules and join as ``"tensor"`` terms."""
    if xs[0].dim() != 4:
        return None
    kinds = [fused_kind(edge_ops[e][o]) for e, o in pairs]
    if rest is None and all(k == "tensor" for k in kinds):
        return None
    outputs: List[torch.Tensor] = []
    sources: List[int] = []
    relu_x: Dict[int, List[torch.Tensor]] = {}  # per edge: ReLU(x) shared by its ReLU-Conv-BN ops
    for (e, o), k in zip(pairs, kinds):
        if k == "tensor":
            sources.append(len(outputs))
            outputs.append(_run_sharing_relu(edge_ops[e][o], xs[e], relu_x.setdefault(e, [])))
        else:
            sources.append(-1)
    shape = outputs[0].shape if outputs else xs[pairs[0][0]].shape if pairs else xs[0].shape
    if any(y.shape != shape for y in outputs):
        return None
    slot: Dict[int, int] = {}
    fused_xs: List[torch.Tensor] = []
    norms: List[torch.Tensor] = []
    for t, ((e, o), k) in enumerate(zip(pairs, kinds)):
        if k == "tensor":
            continue
        if xs[e].shape != shape:
            return None
        if e not in slot:
            slot[e] = len(fused_xs)
            fused_xs.append(xs[e])
        sources[t] = slot[e]
        if k.endswith("_bn"):
            norms.append(gaea_ext.pool_batch_norm(xs[e], k[:-3], edge_ops[e][o][1]))
    if rest is not None:
        kinds.append("ones")
        sources.append(0)
        w_terms = torch.cat([w_terms.reshape(-1), rest.reshape(1).to(w_terms.dtype)])
    if not fused_xs:  # only conv-like terms (and the ones term): xs[0] just sets the shape
        fused_xs = [outputs[0].detach()]
    dtype = fused_xs[0].dtype
    for t in fused_xs + outputs:
        dtype = torch.promote_types(dtype, t.dtype)
    fused_xs = [x.to(dtype) for x in fused_xs]  # autocast: conv outputs in bf16 next to float32 inputs
    outputs = [y.to(dtype) for y in outputs]
    return gaea_ext.mixed_terms(fused_xs, outputs, w_terms, kinds, sources, norms or None)


def is_none_op(name: Optional[str], op: Optional[nn.Module] = None) -> bool:
    """True for the ``none`` op (by name, or by a module flag ``is_none_op = True``)."""
    if name is not None:
        return name == "none"
    return bool(getattr(op, "is_none_op", False))


def none_mask(op_names: Sequence[str]) -> List[bool]:
    return [n == "none" for n in op_names]


def _combine(ys: List[torch.Tensor], w: torch.Tensor, use_fused: bool) -> torch.Tensor:
    dtypes = {y.dtype for y in ys}
    if len(dtypes) > 1:  # e.g. a float32 skip input next to bf16 conv outputs under autocast
        dt = ys[0].dtype
        for y in ys[1:]:
            dt = torch.promote_types(dt, y.dtype)
        ys = [y.to(dt) for y in ys]
    if use_fused:
        return gaea_ext.weighted_sum(ys, w)
    out = ys[0] * w[0].to(ys[0].dtype)
    for k in range(1, len(ys)):
        out = out + ys[k] * w[k].to(ys[k].dtype)
    return out


def _zero_node(xs, edge_ops, op_names) -> torch.Tensor:
    """The zero output of a node whose every term is `none`: the `none` op of the first edge
    applied to its input (so a stride-2 `none` gives the subsampled shape)."""
    for o, op in enumerate(edge_ops[0]):
        if is_none_op(op_names[o] if op_names is not None else None, op):
            return op(xs[0])
    return xs[0] * 0.0


def mix_node(
    xs: Sequence[torch.Tensor],
    edge_ops: Sequence[Sequence[nn.Module]],
    op_weights: torch.Tensor,
    edge_weights: Optional[torch.Tensor] = None,
    op_names: Optional[Sequence[str]] = None,
    sampled: Optional[Sequence[int]] = None,
    use_fused: Optional[bool] = None,
) -> torch.Tensor:
    """Output of one node: the weighted sum over all incoming edges and all (or the sampled)
    ops, in one ``gaea_ext.weighted_sum`` call. See the module docstring."""
    if use_fused is None:
        use_fused = USE_FUSED
    num_edges = len(xs)
    if len(edge_ops) != num_edges:
        raise ValueError(f"mix_node: {num_edges} inputs but {len(edge_ops)} edges of ops")
    if op_weights.dim() != 2 or op_weights.shape[0] != num_edges:
        raise ValueError(f"mix_node: 'op_weights' must be [{num_edges}, num_ops], got {tuple(op_weights.shape)}")
    num_ops = op_weights.shape[1]
    if op_names is not None and len(op_names) != num_ops:
        raise ValueError(f"mix_node: {len(op_names)} op names but op_weights has {num_ops} columns")
    if edge_weights is not None:
        w = op_weights * edge_weights.reshape(num_edges, 1)
    else:
        w = op_weights

    def none_at(e: int, o: int) -> bool:
        return is_none_op(op_names[o] if op_names is not None else None, edge_ops[e][o])

    if sampled is None:
        ys: List[torch.Tensor] = []
        cols = [o for o in range(num_ops) if not none_at(0, o)]
        if use_fused and FUSE_PARAMETER_FREE and cols:
            pairs = [(e, o) for e in range(num_edges) for o in cols]
            out = _mix_fused_terms(xs, edge_ops, pairs, w[:, cols].reshape(-1))
            if out is not None:
                return out
        for e in range(num_edges):
            ops = edge_ops[e]
            for o in cols:
                ys.append(ops[o](xs[e]))
        if not ys:  # only `none` ops: the node is zero
            return _zero_node(xs, edge_ops, op_names) + w.sum() * 0.0
        if len(cols) == num_ops:
            flat = w.reshape(-1)
        elif len(cols) == num_ops - 1 and (cols[0] == 1 or cols[-1] == num_ops - 2):
            flat = (w[:, 1:] if cols[0] == 1 else w[:, :-1]).reshape(-1)
        else:
            flat = w[:, cols].reshape(-1)
        return _combine(ys, flat, use_fused)

    # GDAS: only the sampled op of each edge runs.
    if len(sampled) != num_edges:
        raise ValueError(f"mix_node: 'sampled' must hold one op index per edge ({num_edges}), got {len(sampled)}")
    picks = []
    for e in range(num_edges):
        i = int(sampled[e])
        if not 0 <= i < num_ops:
            raise ValueError(f"mix_node: sampled op index {i} out of range for {num_ops} ops")
        if not none_at(e, i):  # none * h = nothing (its gradient is exactly 0 as well)
            picks.append((e, i))
    # sum_e sum_{o != i_e} w[e, o]: exact zeros in value (onehot - p + p), gradient 1 each.
    rest_mask = op_weights.detach() == 0
    rest = (w * rest_mask).sum()
    if use_fused and FUSE_PARAMETER_FREE and picks:
        # One call: the sampled terms (pools and skips in-kernel) plus `rest` as a "ones" term,
        # whose backward is just sum(grad).
        sel_w = torch.stack([w[e, i] for e, i in picks])
        out = _mix_fused_terms(xs, edge_ops, picks, sel_w, rest)
        if out is not None:
            return out
    ys = [edge_ops[e][i](xs[e]) for e, i in picks]
    sel = [w[e, i] for e, i in picks]
    if not ys:  # `none` drawn on every edge: the node is zero (plus the 0-valued terms)
        return _zero_node(xs, edge_ops, op_names) + rest
    out = _combine(ys, torch.stack(sel), use_fused)
    return out + rest.to(out.dtype)
