"""Node mixing on the fused ops: one ``gaea_ext`` call per node over all its incoming edges
and ops (docs/method.md §3).

``mix_node(xs, edge_ops, op_weights, edge_weights=None, kinds=None, sampled=None)``:

- ``xs[e]``: the input tensor of incoming edge ``e``; ``edge_ops[e]``: that edge's candidate
  ops; ``op_weights``: ``[E, num_ops]`` rows of this node's edges; ``edge_weights``: ``[E]``
  or None. Weight of op ``o`` on edge ``e``: ``op_weights[e, o] * edge_weights[e]``.
- ``kinds``: how each op is fused, as its search space's op table declares it
  (:class:`~gaea_nas.spaces.op_table.OpSpec`): one list for every edge or one list per edge.
  ``"none"`` contributes nothing (the op is never called, no zero tensor is made);
  ``"skip"``, ``"avg_pool_3x3"``, ``"max_pool_3x3"`` and the ``"_bn"`` pools (a pool followed
  by ``BatchNorm2d(affine=False)``, exposed by the op as ``op.bn``) are computed inside the
  kernel from the edge input and the op is never called; ``"tensor"`` ops run as modules and
  join as precomputed terms. ``kinds=None`` runs every op as a module.
- With ``FUSE_PARAMETER_FREE`` (default) the node is one ``gaea_ext.mixed_terms`` call; the
  BN pools' batch statistics come from ``gaea_ext.pool_batch_norm``, which keeps the
  module's running statistics, so no pooled tensor is ever materialised. The ReLU-Conv-BN
  ops of one edge share one ReLU(x). Nodes with nothing to fuse use one
  ``gaea_ext.weighted_sum`` over the op outputs.
- GDAS (``sampled`` = op index per edge, from ``ArchParameters.sampled_indices()``): only the
  sampled op of each edge runs; ``out = sum_e h[e, i_e] * op_{i_e}(x_e) + sum_e sum_{o != i_e} h[e, o]``
  (times the edge weight); the second sum is 0-valued but carries gradient to every op
  weight, and joins the fused call as a ``"ones"`` term, whose backward is ``sum(grad)``.
- ``precomputed``: ``{(edge, op): term}`` for ops whose output the caller already computed
  (the supernets' batched same-input convolutions, :mod:`gaea_nas.spaces.batched_convs`);
  such an op is not called. A term is a tensor, or a :class:`NormedTerm` (a raw output and
  the ``[2, C]`` mean / 1-std its BatchNorm applies), which joins the fused call as a
  ``"tensor_bn"`` term (normalised inside the kernel) and is normalised in PyTorch elsewhere.
- ``use_fused=False`` (or module-level ``USE_FUSED = False``) computes the plain PyTorch sum
  ``sum(w * op(x))`` instead, for comparison.

Switches, read at call time: :data:`USE_FUSED`, :data:`FUSE_PARAMETER_FREE`,
:data:`BATCH_CONVS` (the supernets batch the convolutions of the edges leaving one node) and
:data:`TENSOR_BN` (BatchNorms folded into the node as ``"tensor_bn"`` terms, where
``gaea_ext`` has them).
"""
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

import gaea_ext

USE_FUSED = True  # module-level switch: False = plain PyTorch path everywhere
FUSE_PARAMETER_FREE = True  # False: call the parameter-free ops and mix with weighted_sum
BATCH_CONVS = True  # the supernets run the convs of all edges leaving a node as one conv per kernel size
TENSOR_BN = True  # an op's final BatchNorm(affine=False) is applied inside the mixing kernel

#: The kinds an op table may declare; "tensor" means the op runs as a module.
FUSED_KINDS = ("none", "skip", "avg_pool_3x3", "max_pool_3x3", "avg_pool_3x3_bn", "max_pool_3x3_bn", "tensor")

__all__ = ["BATCH_CONVS", "FUSED_KINDS", "FUSE_PARAMETER_FREE", "NormedTerm", "TENSOR_BN", "USE_FUSED",
           "batch_convs", "mix_node", "tensor_bn_available", "use_fused_ops"]


class NormedTerm(NamedTuple):
    """An op output before its BatchNorm(affine=False): ``raw`` and either the ``[2, C]`` rows
    (mean, 1/std) of the normalisation or the ``BatchNorm2d`` module, which the mixing kernel
    applies."""

    raw: torch.Tensor
    norm: Union[torch.Tensor, nn.BatchNorm2d]

    def materialise(self) -> torch.Tensor:
        """The normalised output, in PyTorch: ``(raw - mean) * rstd`` per channel, or the module on ``raw``."""
        if isinstance(self.norm, nn.Module):
            return self.norm(self.raw)
        mean, rstd = (r.to(self.raw.dtype).reshape(1, -1, 1, 1) for r in self.norm)
        return (self.raw - mean) * rstd


Term = Union[torch.Tensor, NormedTerm]


def use_fused_ops() -> bool:
    """The module-level switch :data:`USE_FUSED`, read at call time."""
    return USE_FUSED


def batch_convs() -> bool:
    """Whether the supernets batch same-input convolutions (:data:`USE_FUSED` and :data:`BATCH_CONVS`)."""
    return USE_FUSED and BATCH_CONVS


def tensor_bn_available() -> bool:
    """Whether BatchNorms fold into the node: :data:`TENSOR_BN` on, the fused path on, and a
    ``gaea_ext`` with ``tensor_batch_norm`` and the ``"tensor_bn"`` kind."""
    return USE_FUSED and TENSOR_BN and hasattr(gaea_ext, "tensor_batch_norm")


def _as_tensor(term: Term) -> torch.Tensor:
    return term.materialise() if isinstance(term, NormedTerm) else term


def _edge_kinds(kinds, num_edges: int, num_ops: int) -> List[List[str]]:
    """``kinds`` as one list of ``num_ops`` kinds per edge (validated)."""
    if kinds is None:
        return [["tensor"] * num_ops for _ in range(num_edges)]
    if isinstance(kinds, str):
        raise TypeError("mix_node: 'kinds' must be a sequence of kind names (or one per edge), not a string")
    kinds = list(kinds)
    rows = [list(k) for k in kinds] if kinds and not isinstance(kinds[0], str) else [kinds] * num_edges
    if len(rows) != num_edges:
        raise ValueError(f"mix_node: 'kinds' has {len(rows)} rows for {num_edges} edges")
    for e, row in enumerate(rows):
        if len(row) != num_ops:
            raise ValueError(f"mix_node: 'kinds' row {e} has {len(row)} kinds for {num_ops} ops")
        for k in row:
            if k not in FUSED_KINDS:
                raise ValueError(f"mix_node: unknown kind {k!r}; expected one of {FUSED_KINDS}")
    return rows


def _term_weights(w: torch.Tensor, pairs) -> torch.Tensor:
    """``w[e, o]`` for each ``(e, o)`` of ``pairs`` (edge-major), as a 1-D tensor: a slice when
    every edge keeps the same contiguous ops (the usual case: all ops, or all but ``none``)."""
    num_edges = w.shape[0]
    cols = [o for e, o in pairs if e == pairs[0][0]]
    if len(pairs) == num_edges * len(cols) and all((e, o) == (i // len(cols), cols[i % len(cols)]) for i, (e, o) in enumerate(pairs)):
        if cols == list(range(cols[0], cols[0] + len(cols))):
            return w[:, cols[0]:cols[0] + len(cols)].reshape(-1)
        return w[:, cols].reshape(-1)
    return w[[e for e, _ in pairs], [o for _, o in pairs]]


def _relu_body(op: nn.Module) -> Optional[List[nn.Module]]:
    """The layers after the leading (not in-place) ReLU of an ``nn.Sequential`` op (or of the
    ``nn.Sequential`` an op keeps as ``.op``, as the DARTS ops do); None for other ops."""
    seq = op if isinstance(op, nn.Sequential) else getattr(op, "op", None)
    if isinstance(seq, nn.Sequential) and len(seq) > 1 and type(seq[0]) is nn.ReLU and not seq[0].inplace:
        return list(seq)[1:]
    return None


def _final_bn(layers: Optional[List[nn.Module]]) -> Optional[nn.BatchNorm2d]:
    """The final ``BatchNorm2d(affine=False)`` of ``layers``, which the kernel can apply."""
    if layers and type(layers[-1]) is nn.BatchNorm2d and not layers[-1].affine:
        return layers[-1]
    return None


def _run_sharing_relu(op: nn.Module, x: torch.Tensor, relu_x: List[torch.Tensor], fold_bn: bool = False) -> Term:
    """``op(x)``; an op that starts with a (not in-place) ReLU reuses the edge's ReLU(x), so
    the convs of one edge keep one ReLU output for the backward, not one each. With
    ``fold_bn`` an op ending in ``BatchNorm2d(affine=False)`` returns ``(output before the
    BatchNorm, the BatchNorm)`` for the kernel to apply."""
    layers = _relu_body(op)
    if layers is None:
        return op(x)
    if not relu_x:
        relu_x.append(torch.relu(x))
    h = relu_x[0]
    bn = _final_bn(layers) if fold_bn else None
    for m in layers[:-1] if bn is not None else layers:
        h = m(h)
    return NormedTerm(h, bn) if bn is not None else h


def _mix_fused_terms(xs, edge_ops, kinds, pairs, w_terms, rest=None,
                     precomputed: Optional[Mapping[Tuple[int, int], Term]] = None,
                     pool_stats_cache: Optional[Dict[Tuple[int, str], torch.Tensor]] = None) -> Optional[torch.Tensor]:
    """The node as one mixed_terms call over the terms ``pairs`` = [(edge, op), ...] with
    weights ``w_terms``, plus GDAS's 0-valued ``rest`` as a ``"ones"`` term; or None when it
    does not fit (outputs of different shapes, or nothing to fuse)."""
    if xs[0].dim() != 4:
        return None
    precomputed = precomputed or {}
    fold_bn = tensor_bn_available()
    term_kinds = [kinds[e][o] for e, o in pairs]
    if rest is None and not fold_bn and all(k == "tensor" for k in term_kinds):
        return None
    outputs: List[torch.Tensor] = []
    sources: List[int] = []
    norm_of: Dict[int, object] = {}  # term -> its BatchNorm module or [2, C] norm
    relu_x: Dict[int, List[torch.Tensor]] = {}  # per edge: ReLU(x) shared by its ReLU-Conv-BN ops
    for t, ((e, o), k) in enumerate(zip(pairs, term_kinds)):
        if k != "tensor":
            sources.append(-1)
            continue
        y = precomputed.get((e, o))
        if y is None:
            y = _run_sharing_relu(edge_ops[e][o], xs[e], relu_x.setdefault(e, []), fold_bn)
        if isinstance(y, NormedTerm):
            y, norm_of[t] = y
            term_kinds[t] = "tensor_bn"
        sources.append(len(outputs))
        outputs.append(y)
    shape = outputs[0].shape if outputs else xs[pairs[0][0]].shape if pairs else xs[0].shape
    if any(y.shape != shape for y in outputs):
        return None
    slot: Dict[int, int] = {}
    fused_xs: List[torch.Tensor] = []
    for t, ((e, o), k) in enumerate(zip(pairs, term_kinds)):
        if k in ("tensor", "tensor_bn"):
            continue
        if xs[e].shape != shape:
            return None
        if e not in slot:
            slot[e] = len(fused_xs)
            fused_xs.append(xs[e])
        sources[t] = slot[e]
    for t, ((e, o), k) in enumerate(zip(pairs, term_kinds)):
        if k.endswith("_bn") and k != "tensor_bn":  # the BN pools: statistics of the pooled input
            norm_of[t] = _pool_norm(xs, e, k[:-3], edge_ops[e][o].bn, pool_stats_cache)
    norms = [norm_of[t] for t in sorted(norm_of)]
    if rest is not None:
        term_kinds.append("ones")
        sources.append(0)
        w_terms = torch.cat([w_terms.reshape(-1), rest.reshape(1).to(w_terms.dtype)])
    if not fused_xs:  # only conv-like terms (and the ones term): xs[0] just sets the shape
        fused_xs = [outputs[0].detach()]
    dtype = fused_xs[0].dtype
    for t in fused_xs + outputs:
        dtype = torch.promote_types(dtype, t.dtype)
    fused_xs = [x.to(dtype) for x in fused_xs]  # autocast: conv outputs in bf16 next to float32 inputs
    outputs = [y.to(dtype) for y in outputs]
    return gaea_ext.mixed_terms(fused_xs, outputs, w_terms, term_kinds, sources, norms or None)


def _pool_norm(xs, e: int, kind: str, bn: nn.BatchNorm2d, cache) -> torch.Tensor:
    """``bn``'s norm of ``kind``'s pool of input ``e``; in training mode the pool's statistics
    come from ``cache`` (keyed by input and kind) when another edge of the same input computed
    them, so the BN pools of all edges leaving one node take one statistics pass."""
    if cache is None or not (bn.training or bn.running_mean is None):
        return gaea_ext.pool_batch_norm(xs[e], kind, bn)
    stats = cache.get((e, kind))
    if stats is None:
        stats = cache[(e, kind)] = gaea_ext.pool_stats(xs[e], kind)
    return gaea_ext.pool_batch_norm(xs[e], kind, bn, stats=stats)


def _op_output(edge_ops, xs, e: int, o: int, precomputed) -> torch.Tensor:
    """Op ``o`` of edge ``e`` on its input, or its precomputed output."""
    term = precomputed.get((e, o)) if precomputed else None
    return edge_ops[e][o](xs[e]) if term is None else _as_tensor(term)


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


def _zero_node(xs, edge_ops, kinds) -> torch.Tensor:
    """The zero output of a node whose every term is ``none``: the ``none`` op of the first
    edge applied to its input (so a stride-2 ``none`` gives the subsampled shape)."""
    for o, op in enumerate(edge_ops[0]):
        if kinds[0][o] == "none":
            return op(xs[0])
    return xs[0] * 0.0


def mix_node(
    xs: Sequence[torch.Tensor],
    edge_ops: Sequence[Sequence[nn.Module]],
    op_weights: torch.Tensor,
    edge_weights: Optional[torch.Tensor] = None,
    kinds: Optional[Sequence] = None,
    sampled: Optional[Sequence[int]] = None,
    use_fused: Optional[bool] = None,
    precomputed: Optional[Mapping[Tuple[int, int], Term]] = None,
    pool_stats_cache: Optional[Dict[Tuple[int, str], torch.Tensor]] = None,
) -> torch.Tensor:
    """Output of one node: the weighted sum over all incoming edges and all (or the sampled)
    ops, in one fused call. See the module docstring. ``pool_stats_cache``: a dict shared by
    the nodes of one cell whose input ``e`` is the same tensor in every call (state ``e``), so
    the training statistics of a BN pool of state ``e`` are computed once for all its edges."""
    if use_fused is None:
        use_fused = USE_FUSED
    num_edges = len(xs)
    if len(edge_ops) != num_edges:
        raise ValueError(f"mix_node: {num_edges} inputs but {len(edge_ops)} edges of ops")
    if op_weights.dim() != 2 or op_weights.shape[0] != num_edges:
        raise ValueError(f"mix_node: 'op_weights' must be [{num_edges}, num_ops], got {tuple(op_weights.shape)}")
    num_ops = op_weights.shape[1]
    kinds = _edge_kinds(kinds, num_edges, num_ops)
    if edge_weights is not None:
        w = op_weights * edge_weights.reshape(num_edges, 1)
    else:
        w = op_weights

    if sampled is None:
        pairs = [(e, o) for e in range(num_edges) for o in range(num_ops) if kinds[e][o] != "none"]
        if use_fused and FUSE_PARAMETER_FREE and pairs:
            out = _mix_fused_terms(xs, edge_ops, kinds, pairs, _term_weights(w, pairs), precomputed=precomputed,
                                   pool_stats_cache=pool_stats_cache)
            if out is not None:
                return out
        if not pairs:  # only `none` ops: the node is zero
            return _zero_node(xs, edge_ops, kinds) + w.sum() * 0.0
        ys = [_op_output(edge_ops, xs, e, o, precomputed) for e, o in pairs]
        return _combine(ys, _term_weights(w, pairs), use_fused)

    # GDAS: only the sampled op of each edge runs.
    if len(sampled) != num_edges:
        raise ValueError(f"mix_node: 'sampled' must hold one op index per edge ({num_edges}), got {len(sampled)}")
    picks = []
    for e in range(num_edges):
        i = int(sampled[e])
        if not 0 <= i < num_ops:
            raise ValueError(f"mix_node: sampled op index {i} out of range for {num_ops} ops")
        if kinds[e][i] != "none":  # none * h = nothing (its gradient is exactly 0 as well)
            picks.append((e, i))
    # sum_e sum_{o != i_e} w[e, o]: exact zeros in value (onehot - p + p), gradient 1 each.
    rest_mask = op_weights.detach() == 0
    rest = (w * rest_mask).sum()
    if use_fused and FUSE_PARAMETER_FREE and picks:
        # One call: the sampled terms (pools and skips in-kernel) plus `rest` as a "ones" term,
        # whose backward is just sum(grad).
        sel_w = torch.stack([w[e, i] for e, i in picks])
        out = _mix_fused_terms(xs, edge_ops, kinds, picks, sel_w, rest, precomputed, pool_stats_cache)
        if out is not None:
            return out
    ys = [_op_output(edge_ops, xs, e, i, precomputed) for e, i in picks]
    sel = [w[e, i] for e, i in picks]
    if not ys:  # `none` drawn on every edge: the node is zero (plus the 0-valued terms)
        return _zero_node(xs, edge_ops, kinds) + rest
    out = _combine(ys, torch.stack(sel), use_fused)
    return out + rest.to(out.dtype)
