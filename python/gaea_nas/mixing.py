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
- ``use_fused=False`` (or module-level ``USE_FUSED = False``) computes the plain PyTorch sum
  ``sum(w * op(x))`` instead, for comparison.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

import gaea_ext

USE_FUSED = True  # module-level switch: False = plain PyTorch path everywhere

__all__ = ["USE_FUSED", "mix_node", "is_none_op", "none_mask"]


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
    ys = []
    sel = []
    for e in range(num_edges):
        i = int(sampled[e])
        if not 0 <= i < num_ops:
            raise ValueError(f"mix_node: sampled op index {i} out of range for {num_ops} ops")
        if none_at(e, i):
            continue  # none * h = nothing (its gradient is exactly 0 as well)
        ys.append(edge_ops[e][i](xs[e]))
        sel.append(w[e, i])
    # sum_e sum_{o != i_e} w[e, o]: exact zeros in value (onehot - p + p), gradient 1 each.
    rest_mask = op_weights.detach() == 0
    rest = (w * rest_mask).sum()
    if not ys:  # `none` drawn on every edge: the node is zero (plus the 0-valued terms)
        return _zero_node(xs, edge_ops, op_names) + rest
    out = _combine(ys, torch.stack(sel), use_fused)
    return out + rest.to(out.dtype)
