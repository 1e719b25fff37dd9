"""Drop-in modules for DARTS-style search code: :class:`MixedOp`, :class:`MixedNode` and
:class:`PartialChannelNode`. See docs/porting.md."""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .. import reference
from ..mixed_node import mixed_terms
from ..partial_channel import partial_channel_node
from ..pool_stats import pool_batch_norm
from ..weighted_sum import weighted_sum
from ._detect import probe_kind, static_kind

__all__ = ["MixedOp", "MixedNode", "PartialChannelNode"]

_X_KINDS = ("skip", "avg_pool_3x3", "max_pool_3x3") + reference.POOL_BN_KINDS


def _weight_vector(weights, count: int, owner: str, name: str = "weights") -> torch.Tensor:
    """`weights` as a 1-D floating tensor of `count` elements: a 1-D tensor, a `[1, count]`
    row or a list/tuple of `count` 0-d (or one-element) tensors or numbers."""
    if isinstance(weights, (list, tuple)):
        if len(weights) != count:
            raise ValueError(f"{owner}: '{name}' must hold one weight per {'edge' if name == 'edge_weights' else 'op'} "
                             f"({count}), got a {type(weights).__name__} of {len(weights)}")
        items = []
        for k, w in enumerate(weights):
            if not isinstance(w, torch.Tensor):
                if isinstance(w, bool) or not isinstance(w, (int, float)):
                    raise TypeError(f"{owner}: '{name}[{k}]' must be a tensor or a number, got {type(w).__name__}")
                w = torch.tensor(float(w))
            if w.numel() != 1:
                raise ValueError(f"{owner}: '{name}[{k}]' must be a 0-d tensor, got shape {tuple(w.shape)}")
            items.append(w.reshape(()))
        device = next((w.device for w in items if w.device.type != "cpu"), items[0].device)
        weights = torch.stack([w.to(device) for w in items])
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{owner}: '{name}' must be a tensor or a list of 0-d tensors, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{owner}: '{name}' must be floating point, got {weights.dtype}")
    if weights.dim() == 2 and weights.shape[0] == 1:
        weights = weights[0]
    if weights.dim() != 1 or weights.shape[0] != count:
        what = "edge" if name == "edge_weights" else "op"
        raise ValueError(f"{owner}: '{name}' must hold one weight per {what} ({count}) as a 1-D tensor, a [1, {count}] "
                         f"row or a list of {count} 0-d tensors, got shape {tuple(weights.shape)}")
    return weights


def _as_op_list(ops, owner: str) -> nn.ModuleList:
    """The same module objects, registered: an nn.ModuleList as is, any other iterable of
    modules in a new nn.ModuleList."""
    if isinstance(ops, nn.ModuleList):
        mods = ops
    elif isinstance(ops, nn.Module):
        raise TypeError(f"{owner}: 'ops' must be an iterable of op modules (e.g. an nn.ModuleList), got a single "
                        f"{type(ops).__name__}")
    else:
        try:
            items = list(ops)
        except TypeError:
            raise TypeError(f"{owner}: 'ops' must be an iterable of op modules, got {type(ops).__name__}") from None
        for k, op in enumerate(items):
            if not isinstance(op, nn.Module):
                raise TypeError(f"{owner}: 'ops[{k}]' must be an nn.Module, got {type(op).__name__}")
        mods = nn.ModuleList(items)
    if len(mods) == 0:
        raise ValueError(f"{owner}: 'ops' must hold at least one op")
    return mods


class MixedOp(nn.Module):
    """A DARTS mixed op: ``forward(x, weights) = sum_k weights[k] * ops[k](x)`` in one fused
    kernel call, with ``none``, skip and the stride-1 3x3 pools (also followed by
    ``BatchNorm2d(affine=False)``) computed inside the kernel instead of by their modules, and
    the final ``BatchNorm2d(affine=False)`` of an ``nn.Sequential(..., Conv2d, BatchNorm2d)``
    applied inside it (``"tensor_bn"``).

    ``ops``: any iterable of op modules; the same objects are kept and registered (an
    ``nn.ModuleList`` is registered as is, as ``self.ops``). ``weights``: a 1-D tensor of
    ``len(ops)`` elements, a ``[1, K]`` row or a list of ``K`` 0-d tensors. Which ops the
    kernel computes is worked out once (see :mod:`gaea_ext.nn._detect`), from the ops' types at
    construction and, for other parameter-free ops, by a probe at the first forward; the
    result is :attr:`kinds`. Forward value, BatchNorm buffers and every gradient are those of
    ``sum(w * op(x) for w, op in zip(weights, ops))``, up to floating-point summation order.

    Subclassing: ``class MixedOp(gaea_ext.nn.MixedOp)`` with the peer's own ``__init__``
    (``super().__init__()`` with no ops, then ``self._ops = nn.ModuleList(...)``) and no
    ``forward`` of its own takes its ops from ``self._ops``, keeping the peer's state_dict keys.
    """

    def __init__(self, ops: Optional[Iterable[nn.Module]] = None):
        super().__init__()
        self._kind_cache: Optional[Tuple[Tuple[int, ...], List[str]]] = None
        if ops is not None:
            self.ops = _as_op_list(ops, type(self).__name__)

    def op_list(self) -> nn.ModuleList:
        """The candidate ops: ``self.ops``, or a subclass's ``self._ops``."""
        mods = self._modules.get("ops")
        if mods is None:
            mods = self._modules.get("_ops")
        if mods is None:
            raise AttributeError(f"{type(self).__name__}: no ops; pass them to MixedOp(ops) or set self._ops "
                                 "to an nn.ModuleList in a subclass's __init__")
        return mods

    @property
    def kinds(self) -> Optional[List[str]]:
        """The kernel kind of each op (``"tensor"``: runs as a module); None before the first
        forward when an op needs a probe."""
        if self._kind_cache is not None:
            return list(self._kind_cache[1])
        statics = [static_kind(op) for op in self.op_list()]
        return None if any(k is None for k in statics) else statics

    def resolve_kinds(self, x: torch.Tensor) -> List[str]:
        """The kinds for input `x` (probing parameter-free ops once; cached while the op list
        holds the same modules)."""
        ops = self.op_list()
        key = tuple(id(op) for op in ops)
        if self._kind_cache is not None and self._kind_cache[0] == key:
            return self._kind_cache[1]
        kinds = []
        for op in ops:
            kind = static_kind(op)
            if kind is None:
                kind = probe_kind(op, x) if x.dim() == 4 else "tensor"
            kinds.append(kind)
        self._kind_cache = (key, kinds)
        return kinds

    def forward(self, x: torch.Tensor, weights) -> torch.Tensor:
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: 'x' must be a tensor, got {type(x).__name__}")
        ops = self.op_list()
        w = _weight_vector(weights, len(ops), owner)
        return _mix([(x, ops, self.resolve_kinds(x))], w, owner)


def _mix(edges: Sequence[Tuple[torch.Tensor, nn.ModuleList, List[str]]], w: torch.Tensor, owner: str) -> torch.Tensor:
    """``sum_t w[t] * term_t`` over the ops of every edge ``(x, ops, kinds)``, edge by edge, in
    one ``mixed_terms`` call; ``w`` is 1-D with one element per op of every edge."""
    if any(x.dim() != 4 for x, _, _ in edges):
        ys = [op(x) for x, ops, _ in edges for op in ops]
        return weighted_sum(_promote(ys), w)
    xs: List[torch.Tensor] = []
    outputs: List[torch.Tensor] = []
    kinds: List[str] = []
    sources: List[int] = []
    norms: List[Union[torch.Tensor, nn.Module]] = []  # BN modules of tensor_bn terms, else [2, C] norms
    slot: Dict[int, int] = {}
    shapes: List[Tuple[torch.Size, int, int]] = []  # (term shape, edge, op) for the error message
    for e, (x, ops, edge_kinds) in enumerate(edges):
        for k, (op, kind) in enumerate(zip(ops, edge_kinds)):
            if kind in reference.OUTPUT_KINDS:
                if kind == "tensor_bn":  # Sequential(..., Conv2d, BatchNorm2d): the kernel applies the BN
                    y = x
                    for module in list(op)[:-1]:
                        y = module(y)
                    norms.append(op[-1])
                else:
                    y = op(x)
                sources.append(len(outputs))
                outputs.append(y)
                shapes.append((y.shape, e, k))
            elif kind == "none":
                sources.append(0)
            else:
                if e not in slot:
                    slot[e] = len(xs)
                    xs.append(x)
                sources.append(slot[e])
                shapes.append((x.shape, e, k))
                if kind in reference.BN_KINDS:
                    norms.append(pool_batch_norm(x, kind[:-3], op[1]))
            kinds.append(kind)
    if not shapes:  # every op is `none`: their modules give the output's shape
        ys = [op(x) for x, ops, _ in edges for op in ops]
        return weighted_sum(_promote(ys), w)
    shape = shapes[0][0]
    for s, e, k in shapes[1:]:
        if s != shape:
            def where(e, k):
                name = type(edges[e][1][k]).__name__
                return f"edge {e} op {k} ({name})" if len(edges) > 1 else f"op {k} ({name})"
            raise ValueError(f"{owner}: the ops' outputs must share one shape; {where(*shapes[0][1:])} gives "
                             f"{tuple(shape)}, {where(e, k)} gives {tuple(s)}")
    if not xs:  # only module outputs (and `none`): an output just sets the shape
        xs = [outputs[0].detach()]
    xs, outputs = _promote(xs, outputs)
    return mixed_terms(xs, outputs, w, kinds, sources, norms or None)


def _promote(xs: List[torch.Tensor], outputs: Optional[List[torch.Tensor]] = None):
    """Cast to one common dtype (autocast: bf16 conv outputs next to float32 inputs)."""
    everything = xs + (outputs or [])
    dtype = everything[0].dtype
    for t in everything[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    xs = [t if t.dtype == dtype else t.to(dtype) for t in xs]
    if outputs is None:
        return xs
    return xs, [t if t.dtype == dtype else t.to(dtype) for t in outputs]


def _as_mixed_op(edge, owner: str, e: int) -> MixedOp:
    if isinstance(edge, MixedOp):
        return edge
    if isinstance(edge, nn.ModuleList):
        return MixedOp(edge)
    if isinstance(edge, nn.Module):
        for name in ("_ops", "ops"):  # a peer's MixedOp: its op list, the same modules
            mods = edge._modules.get(name)
            if isinstance(mods, nn.ModuleList):
                return MixedOp(mods)
        raise TypeError(f"{owner}: 'edges[{e}]' must be a MixedOp, a module with an '_ops' ModuleList or an "
                        f"iterable of op modules, got {type(edge).__name__}")
    try:
        return MixedOp(edge)
    except TypeError as err:
        raise TypeError(f"{owner}: 'edges[{e}]': {err}") from None


class MixedNode(nn.Module):
    """Every incoming edge of a DARTS node in one kernel call:
    ``forward(xs, weights, edge_weights=None) = sum_e edge_weights[e] * sum_k weights[e][k] * ops_e[k](xs[e])``.

    ``edges``: one entry per incoming edge, each a :class:`MixedOp`, a peer's mixed op (a
    module with an ``_ops`` ModuleList, whose ops are used directly) or an iterable of op
    modules; registered as ``self.edges``. Stride-1 and stride-2 edges mix in the same call
    (a reduction cell's node too): on a stride-2 edge ``none`` is dropped in the kernel and
    the other ops run as modules. ``weights``: ``[E, K]`` (e.g. the node's slice of a
    ``[14, 8]`` softmax) or a list of ``E`` per-edge rows in any :class:`MixedOp` form;
    ``edge_weights``: ``[E]``, a list of 0-d tensors, or None.

    In an existing cell keep the nodes in a plain list (:meth:`of_cell`) so that the cell's
    state_dict keys stay those of the original code.
    """

    def __init__(self, edges: Iterable):
        super().__init__()
        owner = type(self).__name__
        if isinstance(edges, nn.Module) and not isinstance(edges, nn.ModuleList):
            raise TypeError(f"{owner}: 'edges' must be a list of edges, got a single {type(edges).__name__}")
        edges = list(edges)
        if not edges:
            raise ValueError(f"{owner}: 'edges' must hold at least one edge")
        self.edges = nn.ModuleList([_as_mixed_op(edge, owner, e) for e, edge in enumerate(edges)])

    @classmethod
    def of_cell(cls, edges: Sequence, steps: int, num_inputs: int = 2, **kwargs) -> List["MixedNode"]:
        """One node per step of a DARTS cell whose edges are listed node by node (node ``i``
        has ``num_inputs + i`` edges), as a plain list."""
        edges = list(edges)
        sizes = node_sizes(steps, num_inputs)
        if sum(sizes) != len(edges):
            raise ValueError(f"{cls.__name__}.of_cell: {steps} steps with {num_inputs} inputs need {sum(sizes)} "
                             f"edges, got {len(edges)}")
        nodes, lo = [], 0
        for size in sizes:
            nodes.append(cls(edges[lo:lo + size], **kwargs))
            lo += size
        return nodes

    def _term_weights(self, weights, edge_weights, counts: List[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        owner = type(self).__name__
        E = len(counts)
        ew = None if edge_weights is None else _weight_vector(edge_weights, E, owner, "edge_weights")
        if isinstance(weights, torch.Tensor) and weights.dim() == 2 and len(set(counts)) == 1:
            if tuple(weights.shape) != (E, counts[0]):
                raise ValueError(f"{owner}: 'weights' must be [{E}, {counts[0]}] (one row per edge, one weight per "
                                 f"op), got shape {tuple(weights.shape)}")
            if not weights.is_floating_point():
                raise TypeError(f"{owner}: 'weights' must be floating point, got {weights.dtype}")
            w = weights if ew is None else weights * ew.to(weights.dtype).reshape(E, 1)
            return w.reshape(-1), ew
        if isinstance(weights, torch.Tensor) and weights.dim() != 2:
            raise ValueError(f"{owner}: 'weights' must be [{E}, K] or a list of {E} per-edge rows, got shape "
                             f"{tuple(weights.shape)}")
        if not isinstance(weights, (list, tuple, torch.Tensor)):
            raise TypeError(f"{owner}: 'weights' must be an [E, K] tensor or a list of per-edge rows, got "
                            f"{type(weights).__name__}")
        if len(weights) != E:
            raise ValueError(f"{owner}: 'weights' must hold one row per edge ({E}), got {len(weights)}")
        rows = [_weight_vector(row, n, owner, f"weights[{e}]") for e, (row, n) in enumerate(zip(weights, counts))]
        if ew is not None:
            rows = [row * ew[e].to(row.dtype) for e, row in enumerate(rows)]
        return torch.cat(rows), ew

    def _edges_for(self, xs) -> List[Tuple[torch.Tensor, nn.ModuleList, List[str]]]:
        owner = type(self).__name__
        if isinstance(xs, torch.Tensor):
            raise TypeError(f"{owner}: 'xs' must be a list of edge inputs (one per edge), not a tensor")
        xs = list(xs)
        if len(xs) != len(self.edges):
            raise ValueError(f"{owner}: 'xs' must hold one input per edge ({len(self.edges)}), got {len(xs)}")
        for e, x in enumerate(xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{owner}: 'xs[{e}]' must be a tensor, got {type(x).__name__}")
        return [(x, edge.op_list(), edge.resolve_kinds(x)) for x, edge in zip(xs, self.edges)]

    def forward(self, xs: Sequence[torch.Tensor], weights, edge_weights=None) -> torch.Tensor:
        edges = self._edges_for(xs)
        w, _ = self._term_weights(weights, edge_weights, [len(ops) for _, ops, _ in edges])
        return _mix(edges, w, type(self).__name__)


class PartialChannelNode(MixedNode):
    """A PC-DARTS node: every edge's ops run on the first ``C / groups`` channels of its input,
    the other channels bypass them (2x2 max-pooled on stride-2 edges), each edge's result is
    channel-shuffled and weighted by its edge weight, and the node sums the edges::

        node = sum_e edge_weights[e] * shuffle(cat([sum_k weights[e][k] * ops_e[k](xs[e][:, :q]),
                                                     bypass_e(xs[e][:, q:])]), groups)

    computed as one fused mixing call over all edges' ops plus one
    :func:`gaea_ext.partial_channel_node` call (bypass sum, pools, cat and shuffle in one pass).
    An edge's stride is read from the shapes, as PC-DARTS does: stride 2 when the mixed output
    is smaller than the edge's input. ``edge_weights=None`` weights every edge by 1. A
    one-edge node is a PC-DARTS ``MixedOp``.
    """

    def __init__(self, edges: Iterable, groups: int = 4):
        super().__init__(edges)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"PartialChannelNode: 'groups' must be a positive int, got {groups!r}")
        self.groups = groups

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, xs: Sequence[torch.Tensor], weights, edge_weights=None) -> torch.Tensor:
        owner = type(self).__name__
        if isinstance(xs, torch.Tensor):
            raise TypeError(f"{owner}: 'xs' must be a list of edge inputs (one per edge), not a tensor")
        xs = list(xs)
        for e, x in enumerate(xs):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise ValueError(f"{owner}: 'xs[{e}]' must be a 4-D tensor [N, C, H, W]")
            if x.shape[1] % self.groups:
                raise ValueError(f"{owner}: 'xs[{e}]' has {x.shape[1]} channels, not divisible by groups={self.groups}")
        q = xs[0].shape[1] // self.groups
        edges = self._edges_for([x[:, :q] for x in xs])
        w, ew = self._term_weights(weights, edge_weights, [len(ops) for _, ops, _ in edges])
        mixed = _mix(edges, w, owner)
        if ew is None:
            ew = torch.ones(len(xs), dtype=w.dtype, device=w.device)
        strides = [1 if x.shape[-2:] == mixed.shape[-2:] else 2 for x in xs]
        states = [x if x.dtype == mixed.dtype else x.to(mixed.dtype) for x in xs]
        return partial_channel_node(mixed, states, ew.to(mixed.device), strides, self.groups)


def node_sizes(steps: int, num_inputs: int = 2) -> List[int]:
    """Incoming edges of each node of a DARTS cell: ``[num_inputs + i for i in range(steps)]``."""
    for name, v in (("steps", steps), ("num_inputs", num_inputs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"'{name}' must be a positive int, got {v!r}")
    return [num_inputs + i for i in range(steps)]
