"""NAS-Bench-201 cells as text: arch strings, their parsing and validity, and the argmax
derivation of a cell from architecture weights (docs/method.md §4.2).

Cell: node 0 is the input, nodes 1..3 are computed, every pair j < i is an edge, 6 edges in
the order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2`` (:data:`NB201_EDGES`); node i is the sum of
its incoming edges; the cell output is node 3.

Arch strings (NAS-Bench-201 ``Structure.tostr``)::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

:func:`parse_arch` gives the 6 op names in edge order, :func:`format_arch` the string back.
"""
import itertools
import re
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..arch_params import ArchParameters
from ..supernet import SuperNet
from .ops import NB201_OPS, check_nb201_ops

NB201_NUM_NODES = 4  # input + 3 computed nodes
NB201_EDGES: Tuple[Tuple[int, int], ...] = tuple((i, j) for i in range(1, NB201_NUM_NODES) for j in range(i))
NB201_NUM_EDGES = len(NB201_EDGES)  # 6
NB201_NUM_ARCHS = len(NB201_OPS) ** NB201_NUM_EDGES  # 15,625
NODE_SLICES = [(i * (i - 1) // 2, i * (i + 1) // 2) for i in range(1, NB201_NUM_NODES)]  # (0,1) (1,3) (3,6)

ArchLike = Union[str, Sequence[str], Sequence[Sequence[Tuple[str, int]]]]

__all__ = [
    "ArchLike",
    "NB201_EDGES",
    "NB201_NUM_EDGES",
    "NB201_NUM_ARCHS",
    "NB201_NUM_NODES",
    "NODE_SLICES",
    "parse_arch",
    "format_arch",
    "arch_nodes",
    "is_valid_arch",
    "all_nb201_archs",
    "derive_nb201_arch",
]

_GROUP_RE = re.compile(r"^\|(?:[A-Za-z0-9_]+~[0-9]+\|)+$")


def parse_arch(arch: ArchLike) -> List[str]:
    """The 6 op names of a NAS-Bench-201 cell, in edge order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``.

    Accepts an arch string, a list of 6 op names, or nodes as ``[[(op, j), ...], ...]``.
    Raises ValueError for a malformed string or an unknown op name."""
    if isinstance(arch, str):
        s = arch.strip()
        groups = s.split("+")
        if len(groups) != NB201_NUM_NODES - 1:
            raise ValueError(
                f"malformed NAS-Bench-201 arch string {arch!r}: expected {NB201_NUM_NODES - 1} node groups "
                f"joined by '+', like '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'"
            )
        nodes = []
        for i, g in enumerate(groups, start=1):
            if not _GROUP_RE.match(g):
                raise ValueError(f"malformed NAS-Bench-201 arch string {arch!r}: node {i} group {g!r} is not of the form '|op~j|op~j|'")
            nodes.append([(tok.split("~")[0], int(tok.split("~")[1])) for tok in g.strip("|").split("|")])
        return _ops_from_nodes(nodes, arch)
    if isinstance(arch, (list, tuple)):
        if len(arch) == NB201_NUM_EDGES and all(isinstance(o, str) for o in arch):
            ops = list(arch)
            for o in ops:
                if o not in NB201_OPS:
                    raise ValueError(f"unknown NAS-Bench-201 op {o!r} in {list(arch)}; expected names from {list(NB201_OPS)}")
            return ops
        if len(arch) == NB201_NUM_NODES - 1 and all(isinstance(n, (list, tuple)) for n in arch):
            return _ops_from_nodes(arch, arch)
        raise ValueError(
            f"a NAS-Bench-201 arch must be a string, {NB201_NUM_EDGES} op names or {NB201_NUM_NODES - 1} node lists, got {arch!r}"
        )
    raise TypeError(f"a NAS-Bench-201 arch must be a string or a sequence, got {type(arch).__name__}")


def _ops_from_nodes(nodes, original) -> List[str]:
    if len(nodes) != NB201_NUM_NODES - 1:
        raise ValueError(f"malformed NAS-Bench-201 arch {original!r}: expected {NB201_NUM_NODES - 1} computed nodes")
    ops: List[str] = []
    for i, node in enumerate(nodes, start=1):
        by_input = {}
        for pair in node:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ValueError(f"malformed NAS-Bench-201 arch {original!r}: node {i} entry {pair!r} is not (op, input)")
            op, j = pair
            if op not in NB201_OPS:
                raise ValueError(f"unknown NAS-Bench-201 op {op!r} in {original!r}; expected names from {list(NB201_OPS)}")
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < i or j in by_input:
                raise ValueError(
                    f"malformed NAS-Bench-201 arch {original!r}: node {i} must list each input 0..{i - 1} once, got input {j!r}"
                )
            by_input[j] = op
        if len(by_input) != i:
            raise ValueError(f"malformed NAS-Bench-201 arch {original!r}: node {i} must have {i} inputs (0..{i - 1}), got {sorted(by_input)}")
        ops.extend(by_input[j] for j in range(i))
    return ops


def arch_nodes(arch: ArchLike) -> List[List[Tuple[str, int]]]:
    """Nodes as ``[[(op, j), ...] for node 1..3]`` (NAS-Bench-201 ``Structure.nodes``)."""
    ops = parse_arch(arch)
    return [[(ops[e], j) for e, j in zip(range(a, b), range(i))] for i, (a, b) in enumerate(NODE_SLICES, start=1)]


def format_arch(arch: ArchLike) -> str:
    """The NAS-Bench-201 string of an arch (string, 6 op names, or node lists)."""
    return "+".join("|" + "".join(f"{op}~{j}|" for op, j in node) for node in arch_nodes(arch))


def is_valid_arch(arch: ArchLike) -> bool:
    """False when the cell output (node 3) is disconnected from the input (NAS-Bench-201
    ``Structure.check_valid``): a node is live if some non-``none`` edge reads a live node."""
    live = [True]
    for node in arch_nodes(arch):
        live.append(any(op != "none" and live[j] for op, j in node))
    return live[-1]


def all_nb201_archs(ops: Sequence[str] = NB201_OPS) -> Iterator[str]:
    """Every cell over ``ops``, as strings (5^6 = 15,625 for the full op set)."""
    for combo in itertools.product(ops, repeat=NB201_NUM_EDGES):
        yield format_arch(list(combo))


def derive_nb201_arch(supernet_or_weights, exclude_none: bool = False, ops: Optional[Sequence[str]] = None) -> str:
    """Argmax op per edge (docs/method.md §4.2) of the derivation weights: ``theta`` (GAEA
    kinds) or ``softmax(alpha)`` (softmax / gdas), times the edge weights when learned. With
    ``exclude_none``, ``none`` is never chosen. Accepts an NB201 supernet, an ArchParameters, or
    a ``[6, num_ops]`` tensor (then ``ops`` names its columns, default the 5 NB201 ops)."""
    if isinstance(supernet_or_weights, SuperNet):
        ops = supernet_or_weights.op_names
        w = supernet_or_weights.derivation_weights()["normal"]
    elif isinstance(supernet_or_weights, ArchParameters):
        w = supernet_or_weights.derivation_weights()
    elif isinstance(supernet_or_weights, torch.Tensor):
        w = supernet_or_weights.detach()
    else:
        raise TypeError(f"derive_nb201_arch: expected an NB201 supernet, ArchParameters or tensor, got {type(supernet_or_weights).__name__}")
    ops = check_nb201_ops(NB201_OPS if ops is None else ops)
    if w.shape != (NB201_NUM_EDGES, len(ops)):
        raise ValueError(f"derive_nb201_arch: weights must be [{NB201_NUM_EDGES}, {len(ops)}], got {tuple(w.shape)}")
    w = w.double().cpu().clone()
    if exclude_none and "none" in ops:
        if len(ops) == 1:
            raise ValueError("derive_nb201_arch: exclude_none with only the 'none' op")
        w[:, ops.index("none")] = -float("inf")
    idx = w.argmax(dim=1).tolist()
    return format_arch([ops[i] for i in idx])
