"""The NAS-Bench-201 supernet: every edge of the search cell holds every op; node i is one
fused mixing call over its incoming edges (docs/method.md §3 and §4.2)."""
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ..arch_params import ArchParameters
from ..batched_convs import batched_relu_conv_bn, is_relu_conv_bn
from ..mixing import batch_convs, mix_node, tensor_bn_available
from ..supernet import SuperNet
from .arch import NB201_EDGES, NB201_NUM_EDGES, NODE_SLICES, ArchLike, derive_nb201_arch, parse_arch
from .ops import NB201_OPS, build_macro, build_nb201_op, check_macro_args, check_nb201_ops, nb201_fused_kinds
from .table import NB201Table

__all__ = ["NB201SearchCell", "NB201SuperNet"]


class NB201SearchCell(nn.Module):
    """Search cell: every edge holds every op (affine=False BNs, running stats tracked);
    node i = one fused mixing call over all its incoming edges and ops, each op fused as the
    op table declares.

    With :func:`~gaea_nas.spaces.mixing.batch_convs` on (the default), the ReLU-Conv-BN ops of
    the edges leaving a node run batched as soon as that node is computed
    (:func:`~gaea_nas.spaces.batched_convs.batched_relu_conv_bn`: one 1x1 and one 3x3
    convolution per node, 6 per cell instead of 12), only the ops a GDAS sample picks when
    sampling, and join the mixing calls as precomputed terms; their BatchNorms fold into the
    mixing kernel when :func:`~gaea_nas.spaces.mixing.tensor_bn_available`."""

    def __init__(self, C: int, ops: Sequence[str], affine: bool = False, track_running_stats: bool = True):
        super().__init__()
        self.ops = tuple(ops)
        self.kinds = nb201_fused_kinds(self.ops, C, C)
        self.edges = nn.ModuleList(
            nn.ModuleList(build_nb201_op(o, C, C, 1, affine, track_running_stats) for o in self.ops) for _ in NB201_EDGES
        )

    def _outgoing_convs(self, j: int, x, sampled) -> Dict[tuple, object]:
        """The batched conv outputs of the edges leaving node ``j`` (input ``x``), keyed by
        ``(edge, op)``: every batchable op of each edge, or the sampled one under GDAS."""
        ops = []
        for i in range(j + 1, len(NODE_SLICES) + 1):
            e = NODE_SLICES[i - 1][0] + j
            for o in range(len(self.ops)) if sampled is None else [int(sampled[e])]:
                if self.kinds[o] == "tensor" and is_relu_conv_bn(self.edges[e][o]):
                    ops.append(((e, o), self.edges[e][o]))
        return batched_relu_conv_bn(x, ops, fold_bn=tensor_bn_available())

    def forward(self, x, op_weights, edge_weights=None, sampled=None):
        nodes = [x]
        batched = {} if batch_convs() else None
        for i, (a, b) in enumerate(NODE_SLICES, start=1):
            if batched is not None:
                batched.update(self._outgoing_convs(i - 1, nodes[-1], sampled))
            nodes.append(
                mix_node(
                    nodes[:i],
                    self.edges[a:b],
                    op_weights[a:b],
                    None if edge_weights is None else edge_weights[a:b],
                    kinds=self.kinds,
                    sampled=None if sampled is None else sampled[a:b],
                    precomputed=None if batched is None else {(e - a, o): t for (e, o), t in batched.items() if a <= e < b},
                )
            )
        return nodes[-1]


class NB201SuperNet(SuperNet):
    """NAS-Bench-201 supernet: stem, 3 stages of N search cells with ResNet reduction blocks,
    BN-ReLU-pool-linear head. ``arch``: ``"simplex"`` (GAEA), ``"softmax"`` (DARTS),
    ``"gdas"``, ``"gaea-gdas"``. ``exclude_none=True`` (or ``ops`` without ``none``) drops
    ``none``; ``edge_weights=True`` adds per-node simplex edge weights (GAEA, init 1/in-degree).

    Implements the :class:`~gaea_nas.spaces.supernet.SuperNet` protocol. Architecture
    parameters: ``self.arch_normal`` (an ArchParameters; NB201 searches one cell type).
    Forward returns
    logits. GDAS kinds draw a fresh sample on every forward, in eval mode too (use
    :meth:`derive` and :class:`NB201Network`, or :meth:`load_arch` for gaea-gdas, to evaluate
    one cell)."""

    space = "nb201"
    depth_field = "cells"

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
        check_macro_args(C, N, num_classes)
        ops = check_nb201_ops(ops)
        if exclude_none:
            ops = tuple(o for o in ops if o != "none")
            if not ops:
                raise ValueError("exclude_none leaves no ops")
        self.op_names = ops
        self.C, self.N, self.num_classes = C, N, num_classes
        self.stem, self.cells, C_prev = build_macro(C, N, lambda c: NB201SearchCell(c, ops, False, track_running_stats))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        segments = [1, 2, 3] if edge_weights else None
        self.arch_normal = ArchParameters(NB201_NUM_EDGES, len(ops), kind=arch, edge_segments=segments, edge_kind="simplex")

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "NB201SuperNet":
        return cls(C=cfg.channels, N=cfg.cells, num_classes=num_classes, arch=cfg.arch_kind,
                   exclude_none=cfg.exclude_none, edge_weights=cfg.edge_weights)

    @property
    def ops(self):
        """The op names (same as ``op_names``)."""
        return self.op_names

    def arch_cells(self) -> Dict[str, ArchParameters]:
        return {"normal": self.arch_normal}

    def describe(self) -> str:
        return f"C={self.C}, N={self.N}"

    @torch.no_grad()
    def derivation_weights(self) -> Dict[str, torch.Tensor]:
        return {"normal": self.arch_normal.derivation_weights()}

    def derive(self, exclude_none: bool = False) -> str:
        """The derived arch string (argmax per edge, see :func:`derive_nb201_arch`)."""
        return derive_nb201_arch(self, exclude_none=exclude_none)

    @classmethod
    def lookup_table(cls, path=None):
        """The NAS-Bench-201 table (:class:`~gaea_nas.spaces.nb201.table.NB201Table`)."""
        return NB201Table(path)

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
        """The derived arch string (same as :meth:`derive`)."""
        return self.derive(exclude_none=exclude_none)

    @torch.no_grad()
    def load_arch(self, arch: ArchLike) -> None:
        """Set theta one-hot on ``arch`` (simplex and gaea-gdas kinds; edge weights to 1)."""
        if self.arch_kind not in ("simplex", "gaea-gdas"):
            raise ValueError(f"load_arch needs a simplex parameterisation, this supernet is {self.arch_kind!r}")
        ops = parse_arch(arch)
        self.arch_normal.alpha.zero_()
        for e, o in enumerate(ops):
            if o not in self.op_names:
                raise ValueError(f"load_arch: op {o!r} is not in this supernet's ops {list(self.op_names)}")
            self.arch_normal.alpha[e, self.op_names.index(o)] = 1.0
        if self.arch_normal.beta is not None:
            self.arch_normal.beta.fill_(1.0)
