"""NAS-Bench-201 search space: arch strings, the supernet and the discrete TinyNetwork
(../shared/docs/method.md sections 4.2 and 4.3).

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
import torch.nn as nn

from .arch_params import ArchParameters, arch_parameters, weight_parameters
from .mixing import mix_node
from .nb201_ops import NB201_OPS, ResNetBasicblock, build_nb201_op, check_nb201_ops

NB201_NUM_NODES = 4  # input + 3 computed nodes
NB201_EDGES: Tuple[Tuple[int, int], ...] = tuple((i, j) for i in range(1, NB201_NUM_NODES) for j in range(i))
NB201_NUM_EDGES = len(NB201_EDGES)  # 6
NB201_NUM_ARCHS = len(NB201_OPS) ** NB201_NUM_EDGES  # 15,625
_NODE_SLICES = [(i * (i - 1) // 2, i * (i + 1) // 2) for i in range(1, NB201_NUM_NODES)]  # (0,1) (1,3) (3,6)

ArchLike = Union[str, Sequence[str], Sequence[Sequence[Tuple[str, int]]]]

__all__ = [
    "NB201_EDGES",
    "NB201_NUM_EDGES",
    "NB201_NUM_ARCHS",
    "parse_arch",
    "format_arch",
    "arch_nodes",
    "is_valid_arch",
    "all_nb201_archs",
    "derive_nb201_arch",
    "NB201SearchCell",
    "NB201InferCell",
    "NB201SuperNet",
    "NB201Network",
    "copy_supernet_weights",
]

_GROUP_RE = re.compile(r"^\|(?:[A-Za-z0-9_]+~[0-9]+\|)+$")


# ----------------------------------------------------------------------------- arch strings
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
    return [[(ops[e], j) for e, j in zip(range(a, b), range(i))] for i, (a, b) in enumerate(_NODE_SLICES, start=1)]


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
    """Argmax op per edge (method.md 4.2): of ``theta * edge weight`` (GAEA), of ``alpha``
    (softmax / gdas: the same argmax as the softmax). With ``exclude_none``, ``none`` is never
    chosen. Accepts an NB201SuperNet, an ArchParameters, or a ``[6, num_ops]`` tensor (then
    ``ops`` names its columns, default the 5 NB201 ops)."""
    if isinstance(supernet_or_weights, NB201SuperNet):
        ops = supernet_or_weights.ops
        supernet_or_weights = supernet_or_weights.arch_normal
    if isinstance(supernet_or_weights, ArchParameters):
        a = supernet_or_weights
        w = a.alpha.detach()
        if a.beta is not None:
            w = w * a.edge_weights().detach()[:, None]
    elif isinstance(supernet_or_weights, torch.Tensor):
        w = supernet_or_weights.detach()
    else:
        raise TypeError(f"derive_nb201_arch: expected an NB201SuperNet, ArchParameters or tensor, got {type(supernet_or_weights).__name__}")
    ops = check_nb201_ops(NB201_OPS if ops is None else ops)
    if w.shape != (NB201_NUM_EDGES, len(ops)):
        raise ValueError(f"derive_nb201_arch: weights must be [{NB201_NUM_EDGES}, {len(ops)}], got {tuple(w.shape)}")
    w = w.float().cpu().clone()
    if exclude_none and "none" in ops:
        if len(ops) == 1:
            raise ValueError("derive_nb201_arch: exclude_none with only the 'none' op")
        w[:, ops.index("none")] = -float("inf")
    idx = w.argmax(dim=1).tolist()
    return format_arch([ops[i] for i in idx])


# ----------------------------------------------------------------------------- cells
class NB201SearchCell(nn.Module):
    """Search cell: every edge holds every op (affine=False BNs, running stats tracked);
    node i = one fused weighted sum over all its incoming edges and ops."""

    def __init__(self, C: int, ops: Sequence[str], affine: bool = False, track_running_stats: bool = True):
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleList(
            nn.ModuleList(build_nb201_op(o, C, C, 1, affine, track_running_stats) for o in self.ops) for _ in NB201_EDGES
        )

    def forward(self, x, op_weights, edge_weights=None, sampled=None):
        nodes = [x]
        for i, (a, b) in enumerate(_NODE_SLICES, start=1):
            nodes.append(
                mix_node(
                    nodes[:i],
                    self.edges[a:b],
                    op_weights[a:b],
                    None if edge_weights is None else edge_weights[a:b],
                    op_names=self.ops,
                    sampled=None if sampled is None else sampled[a:b],
                )
            )
        return nodes[-1]


class NB201InferCell(nn.Module):
    """Discrete cell of one arch (TinyNetwork ``InferCell``): one op per edge, affine BNs;
    node i = sum over j of op(node j); ``none`` edges add zero."""

    def __init__(self, arch: ArchLike, C: int):
        super().__init__()
        self.arch_ops = tuple(parse_arch(arch))
        self.edges = nn.ModuleList(build_nb201_op(o, C, C, 1, True, True) for o in self.arch_ops)

    def forward(self, x):
        nodes = [x]
        for i, (a, b) in enumerate(_NODE_SLICES, start=1):
            out = self.edges[a](nodes[0])
            for e, j in zip(range(a + 1, b), range(1, i)):
                out = out + self.edges[e](nodes[j])
            nodes.append(out)
        return nodes[-1]


def _macro(C: int, N: int, make_cell):
    """stem, [N cells, ResNet block] x2, N cells; returns (stem, cells, C_prev)."""
    stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
    cells = nn.ModuleList()
    C_prev = C
    for stage in range(3):
        C_cur = C * (2**stage)
        if stage > 0:
            cells.append(ResNetBasicblock(C_prev, C_cur, 2, True))
        for _ in range(N):
            cells.append(make_cell(C_cur))
        C_prev = C_cur
    return stem, cells, C_prev


def _check_macro_args(C, N, num_classes):
    for name, v in (("C", C), ("N", N), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name!r} must be a positive int, got {v!r}")


# ----------------------------------------------------------------------------- networks
class NB201SuperNet(nn.Module):
    """NAS-Bench-201 supernet: stem, 3 stages of N search cells with ResNet reduction blocks,
    BN-ReLU-pool-linear head. ``arch``: ``"simplex"`` (GAEA), ``"softmax"`` (DARTS),
    ``"gdas"``, ``"gaea-gdas"``. ``exclude_none=True`` (or ``ops`` without ``none``) drops
    ``none``; ``edge_weights=True`` adds per-node simplex edge weights (GAEA, init 1/in-degree).

    Architecture parameters: ``self.arch_normal`` (an ArchParameters; NB201 searches one cell
    type); ``arch_parameters()`` / ``weight_parameters()`` split the parameters. Forward returns
    logits. GDAS kinds draw a fresh sample on every forward, in eval mode too (use
    :meth:`genotype` and :class:`NB201Network`, or :meth:`load_arch` for gaea-gdas, to evaluate
    one cell)."""

    def __init__(
        self,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        ops: Sequence[str] = NB201_OPS,
        arch: str = "simplex",
        exclude_none: bool = False,
        edge_weights: bool = False,
        track_running_stats: bool = True,
    ):
        super().__init__()
        _check_macro_args(C, N, num_classes)
        ops = check_nb201_ops(ops)
        if exclude_none:
            ops = tuple(o for o in ops if o != "none")
            if not ops:
                raise ValueError("exclude_none leaves no ops")
        self.ops = ops
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem, self.cells, C_prev = _macro(C, N, lambda c: NB201SearchCell(c, ops, False, track_running_stats))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        segments = [1, 2, 3] if edge_weights else None
        self.arch_normal = ArchParameters(NB201_NUM_EDGES, len(ops), kind=arch, edge_segments=segments, edge_kind="simplex")

    @property
    def arch_kind(self) -> str:
        return self.arch_normal.kind

    def arch_parameters(self) -> List[nn.Parameter]:
        return arch_parameters(self)

    def weight_parameters(self) -> List[nn.Parameter]:
        return weight_parameters(self)

    def forward(self, x):
        a = self.arch_normal
        w = a.op_weights()  # GDAS: one sample, one host copy for all edges
        ew = a.edge_weights()
        sampled = a.sampled_indices()
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h, w, ew, sampled) if isinstance(cell, NB201SearchCell) else cell(h)
        h = self.global_pooling(self.lastact(h))
        return self.classifier(h.flatten(1))

    def genotype(self, exclude_none: bool = False) -> str:
        """The derived arch string (argmax per edge, see :func:`derive_nb201_arch`)."""
        return derive_nb201_arch(self, exclude_none=exclude_none)

    @torch.no_grad()
    def load_arch(self, arch: ArchLike) -> None:
        """Set theta one-hot on ``arch`` (simplex and gaea-gdas kinds; edge weights to 1)."""
        if self.arch_kind not in ("simplex", "gaea-gdas"):
            raise ValueError(f"load_arch needs a simplex parameterisation, this supernet is {self.arch_kind!r}")
        ops = parse_arch(arch)
        self.arch_normal.alpha.zero_()
        for e, o in enumerate(ops):
            if o not in self.ops:
                raise ValueError(f"load_arch: op {o!r} is not in this supernet's ops {list(self.ops)}")
            self.arch_normal.alpha[e, self.ops.index(o)] = 1.0
        if self.arch_normal.beta is not None:
            self.arch_normal.beta.fill_(1.0)


class NB201Network(nn.Module):
    """The NAS-Bench-201 ``TinyNetwork`` of one cell: stem, N cells at C, ResNet block, N cells
    at 2C, ResNet block, N cells at 4C, BN-ReLU, global average pool, Linear. Affine BNs.
    Forward returns logits."""

    def __init__(self, arch_str: ArchLike, C: int = 16, N: int = 5, num_classes: int = 10):
        super().__init__()
        _check_macro_args(C, N, num_classes)
        self.arch_str = format_arch(arch_str)
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem, self.cells, C_prev = _macro(C, N, lambda c: NB201InferCell(self.arch_str, c))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def extra_repr(self) -> str:
        return f"arch={self.arch_str!r}, C={self.C}, N={self.N}"

    def forward(self, x):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        h = self.global_pooling(self.lastact(h))
        return self.classifier(h.flatten(1))


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> None:
    if src.track_running_stats and dst.track_running_stats:
        dst.running_mean.copy_(src.running_mean)
        dst.running_var.copy_(src.running_var)
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
    if dst.affine:
        if src.affine:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        else:  # affine=False search BN == affine BN with weight 1, bias 0
            dst.weight.fill_(1.0)
            dst.bias.fill_(0.0)


def _copy_module(src: nn.Module, dst: nn.Module) -> None:
    src_mods, dst_mods = list(src.modules()), list(dst.modules())
    if [type(m) for m in src_mods] != [type(m) for m in dst_mods]:
        raise ValueError(f"copy_supernet_weights: structures differ: {type(src).__name__} vs {type(dst).__name__}")
    for s, d in zip(src_mods, dst_mods):
        if isinstance(s, nn.BatchNorm2d):
            _copy_bn(s, d)
        elif isinstance(s, (nn.Conv2d, nn.Linear)):
            if s.weight.shape != d.weight.shape:
                raise ValueError(f"copy_supernet_weights: shape mismatch {tuple(s.weight.shape)} vs {tuple(d.weight.shape)}")
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias)


@torch.no_grad()
def copy_supernet_weights(supernet: NB201SuperNet, network: NB201Network) -> NB201Network:
    """Copy a supernet's weights into the discrete network of one cell: stem, ResNet blocks and
    head as they are; on each edge, the weights (and BN running statistics) of the op the
    network's cell chose. Affine BNs of the network get weight 1, bias 0 (the supernet's
    cell BNs are affine=False). Returns ``network``."""
    if (supernet.C, supernet.N) != (network.C, network.N) or supernet.num_classes != network.num_classes:
        raise ValueError("copy_supernet_weights: C, N and num_classes must match")
    _copy_module(supernet.stem, network.stem)
    _copy_module(supernet.lastact, network.lastact)
    _copy_module(supernet.classifier, network.classifier)
    for sc, nc in zip(supernet.cells, network.cells):
        if isinstance(sc, ResNetBasicblock):
            _copy_module(sc, nc)
            continue
        for e, op_name in enumerate(nc.arch_ops):
            if op_name == "none":
                continue
            if op_name not in supernet.ops:
                raise ValueError(f"copy_supernet_weights: op {op_name!r} is not in the supernet's ops {list(supernet.ops)}")
            _copy_module(sc.edges[e][supernet.ops.index(op_name)], nc.edges[e])
    return network
