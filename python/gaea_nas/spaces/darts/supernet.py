"""The DARTS / PC-DARTS search supernet (docs/method.md §3 and §4.1): :class:`DartsSuperNet`.

Variants, all on the same cell wiring (14 edges, node-major, inputs ``s0, s1, n0, ...``):

=====================  ====================================================================
``arch="softmax"``     DARTS: ``softmax(alpha)`` mixing; with ``partial_channels=4`` and
                       ``edge_weights=True`` this is PC-DARTS (per-node softmax of ``beta``).
``arch="simplex"``     GAEA DARTS: theta used directly; ``edge_weights=True`` adds GAEA's
                       per-node simplex edge weights (with ``partial_channels=4``: GAEA PC-DARTS).
``arch="gdas"``        GDAS: Gumbel straight-through one-hot from ``log_softmax(alpha)``.
``arch="gaea-gdas"``   GAEA GDAS: the same from ``log theta``. Only the sampled op of each edge
                       runs; the sampled indices of both cell types reach the host in one copy.
=====================  ====================================================================

Mixing goes through :func:`gaea_nas.spaces.mixing.mix_node`: one fused call per node over all
its incoming edges and ops, each op fused as :data:`~gaea_nas.spaces.darts.ops.DARTS_OP_TABLE`
declares (on stride-1 edges ``skip_connect`` and the BN pools are computed in the kernel;
``none`` never runs and makes no zero tensor). With :func:`~gaea_nas.spaces.mixing.batch_convs`
on (the default), the separable and dilated convs of all edges leaving a state run batched per
op type, both stages (:func:`~gaea_nas.spaces.batched_convs.batched_separable_stage`), and the
ops' final BatchNorm folds into the mixing kernel when
:func:`~gaea_nas.spaces.mixing.tensor_bn_available`.

**Partial channels (PC-DARTS).** Per edge ``j -> i`` PC-DARTS computes
``shuffle(cat(sum_k w_jk op_k(x_j[:C/K]), bypass_j(x_j[C/K:])))`` and node ``i`` sums these
with the edge weights ``beta_j``. ``cat`` and the channel shuffle are fixed linear maps, so

    node_i = shuffle(cat(sum_{j,k} beta_j w_jk op_k(x_j[:C/K]),  sum_j beta_j bypass_j))

which is what this module computes: one fused mixing call over all (edge, op) pairs of the node
on the ``C/K``-channel slices (via ``mix_node``), then one ``gaea_ext.partial_channel_node``
call that sums the bypasses with the edge weights (pooling the stride-2 ones) and writes them
and the mixed part straight into their shuffled positions (with ``gaea_nas.spaces.mixing.USE_FUSED = False``:
one ``weighted_sum`` of the bypass tensors, one ``cat`` and one shuffle per node). It is
the same function (only the floating-point summation order differs), and it is tested against a
per-edge PyTorch reference. ``bypass_j`` is the identity on stride-1 edges and
``MaxPool2d(2, 2)`` on the stride-2 edges of a reduction cell.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import gaea_ext

from ..arch_params import ArchParameters, sample_op_weights
from ..batched_convs import batched_separable_stage, is_separable_stage
from ..mixing import batch_convs, mix_node, tensor_bn_available, use_fused_ops
from ..supernet import SuperNet
from .genotypes import Genotype, derive_darts_cell, genotype_to_weights, get_genotype
from .ops import FactorizedReduce, ReLUConvBN, darts_fused_kinds, darts_op_names, search_op

__all__ = [
    "channel_shuffle",
    "DartsSearchCell",
    "DartsSuperNet",
    "edge_index",
    "num_darts_edges",
    "copy_cell_to_discrete",
]

ARCH_KINDS = ("simplex", "softmax", "gdas", "gaea-gdas")


def num_darts_edges(steps: int = 4, num_inputs: int = 2) -> int:
    """Edges of a DARTS cell: ``sum_i (num_inputs + i)`` (14 for 4 nodes)."""
    return sum(num_inputs + i for i in range(steps))


def edge_index(node: int, inp: int, num_inputs: int = 2) -> int:
    """Row of edge ``inp -> node`` in the node-major edge order (inputs ``s0, s1, n0, ...``)."""
    if not 0 <= inp < num_inputs + node:
        raise ValueError(f"node {node} has inputs 0..{num_inputs + node - 1}, got {inp}")
    return sum(num_inputs + i for i in range(node)) + inp


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet/PC-DARTS channel shuffle: view ``(B, groups, C/groups, H, W)``, swap axes 1
    and 2, flatten back. Keeps channels_last inputs channels_last."""
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible into {groups} groups")
    out = x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class DartsSearchCell(nn.Module):
    """A DARTS search cell: preprocessing (``affine=False``), ``steps`` nodes, one candidate-op
    list per edge (``edges[e][o]``, ops in ``op_names`` order), concat of the last
    ``multiplier`` nodes. ``partial_channels=K`` builds the PC-DARTS edge (ops on ``C/K``
    channels, bypass, shuffle)."""

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, op_names: Sequence[str], partial_channels: Optional[int] = None):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.op_names = list(op_names)
        self.k = partial_channels
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        C_op = C if partial_channels is None else C // partial_channels
        self.C = C
        self.C_op = C_op
        self.strides: List[int] = []
        self.kinds: List[List[str]] = []  # per edge: how the mixing computes each op
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.strides.append(stride)
                self.kinds.append(darts_fused_kinds(self.op_names, stride))
                self.edges.append(nn.ModuleList([search_op(name, C_op, stride) for name in self.op_names]))
        if partial_channels is not None:
            self.bypass_pool = nn.MaxPool2d(2, 2)

    def _outgoing_separable_convs(self, j: int, x, sampled) -> Dict[tuple, object]:
        """The separable / dilated convs of the edges leaving state ``j`` (input ``x``, the
        channel slice under partial channels), batched per op type, keyed by ``(edge, op)``:
        every such op of each edge, or the sampled one under GDAS."""
        ops = []
        for i in range(max(j - 1, 0), self.steps):
            e = edge_index(i, j)
            for o in range(len(self.op_names)) if sampled is None else [int(sampled[e])]:
                if self.kinds[e][o] == "tensor" and is_separable_stage(self.edges[e][o]):
                    ops.append(((e, o), self.edges[e][o]))
        return batched_separable_stage(x, ops, fold_bn=tensor_bn_available())

    def _mix(self, xs, lo, hi, w, ew, sampled, hw, batched=None, pool_stats=None):
        kw = dict(kinds=self.kinds[lo:hi], pool_stats_cache=pool_stats)
        if sampled is not None:
            kw["sampled"] = sampled[lo:hi]
        if batched is not None:
            kw["precomputed"] = {(e - lo, o): t for (e, o), t in batched.items() if lo <= e < hi}
        out = mix_node(xs, self.edges[lo:hi], w[lo:hi], None if ew is None else ew[lo:hi], **kw)
        if out.shape[-2:] != hw:
            # GDAS drew `none` on every edge of this node: mix_node returns a 0-valued tensor
            # shaped like its first input, full size on the stride-2 edges of a reduction cell.
            out = out[:, :, ::2, ::2]
        return out

    def _node_partial(self, states, lo, hi, w, ew, sampled, hw, batched=None, pool_stats=None):
        q = self.C_op
        mixed = self._mix([s[:, :q] for s in states], lo, hi, w, ew, sampled, hw, batched, pool_stats)
        bw = torch.ones(hi - lo, dtype=w.dtype, device=w.device) if ew is None else ew[lo:hi]
        if use_fused_ops():  # bypass sum, 2x2 pools, cat and shuffle in one pass
            ins = [s if s.dtype == mixed.dtype else s.to(mixed.dtype) for s in states]
            return gaea_ext.partial_channel_node(mixed, ins, bw, self.strides[lo:hi], self.k)
        tails = []
        for s, stride in zip(states, self.strides[lo:hi]):
            t = s[:, q:]
            tails.append(self.bypass_pool(t) if stride == 2 else t)
        if any(t.dtype != mixed.dtype for t in tails):
            tails = [t.to(mixed.dtype) for t in tails]
        bypass = gaea_ext.weighted_sum(tails, bw)
        return channel_shuffle(torch.cat([mixed, bypass.to(mixed.dtype)], dim=1), self.k)

    def forward(self, s0, s1, op_weights: torch.Tensor, edge_weights: Optional[torch.Tensor] = None,
                sampled: Optional[Sequence[int]] = None):
        """``op_weights [n_edges, n_ops]``; ``edge_weights [n_edges]`` or None; ``sampled``: the
        GDAS op index per edge (only that op runs) or None."""
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        h, w = s1.shape[-2:]
        hw = torch.Size(((h + 1) // 2, (w + 1) // 2)) if self.reduction else s1.shape[-2:]
        lo = 0
        batched = {} if batch_convs() else None
        pool_stats = {} if batch_convs() else None  # the BN pools' statistics, per (state, pool kind)
        for _ in range(self.steps):
            hi = lo + len(states)
            if batched is not None:  # the states that gained an outgoing edge: s0 and s1, then the newest node
                for j in range(len(states) - (1 if len(states) > 2 else 2), len(states)):
                    x = states[j] if self.k is None else states[j][:, :self.C_op]
                    batched.update(self._outgoing_separable_convs(j, x, sampled))
            if self.k is None:
                out = self._mix(states, lo, hi, op_weights, edge_weights, sampled, hw, batched, pool_stats)
            else:
                out = self._node_partial(states, lo, hi, op_weights, edge_weights, sampled, hw, batched, pool_stats)
            states.append(out)
            lo = hi
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSuperNet(SuperNet):
    """DARTS / PC-DARTS / GDAS / GAEA search network (docs/method.md §4.1).

    Stem Conv3x3(3 -> stem_multiplier*C) + BN, ``layers`` search cells (reductions at
    ``layers//3`` and ``2*layers//3``, channels doubled there), global average pooling, Linear.
    The normal and the reduction cell have their own :class:`ArchParameters`, registered as
    ``arch_normal`` and ``arch_reduce``. ``forward`` returns the logits.

    Args: ``partial_channels`` None or K (PC-DARTS, K=4); ``edge_weights`` learn per-node edge
    weights (``edge_kind`` defaults to ``"simplex"`` for the GAEA kinds and ``"softmax"`` for
    DARTS/GDAS); ``arch`` one of simplex/softmax/gdas/gaea-gdas; ``ops`` the op list (default the
    8 DARTS ops), ``exclude_none`` drops ``none``; ``tau`` the initial GDAS temperature.
    Implements the :class:`~gaea_nas.spaces.supernet.SuperNet` protocol.
    """

    space = "darts"
    depth_field = "layers"

    def __init__(self, C: int = 16, layers: int = 8, num_classes: int = 10, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, partial_channels: Optional[int] = None, edge_weights: bool = False,
                 arch: str = "simplex", ops: Optional[Sequence[str]] = None, exclude_none: bool = False,
                 edge_kind: Optional[str] = None, tau: float = 10.0):
        super().__init__()
        if arch not in ARCH_KINDS:
            raise ValueError(f"DartsSuperNet: unknown arch {arch!r}; expected one of {ARCH_KINDS}")
        for name, v in (("C", C), ("layers", layers), ("num_classes", num_classes), ("steps", steps),
                        ("multiplier", multiplier), ("stem_multiplier", stem_multiplier)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DartsSuperNet: {name!r} must be a positive int, got {v!r}")
        if multiplier > steps:
            raise ValueError(f"DartsSuperNet: multiplier {multiplier} > steps {steps}")
        if partial_channels is not None:
            if isinstance(partial_channels, bool) or not isinstance(partial_channels, int) or partial_channels < 1:
                raise ValueError(f"DartsSuperNet: partial_channels must be None or a positive int, got {partial_channels!r}")
            if C % (2 * partial_channels):
                raise ValueError(
                    f"DartsSuperNet: C={C} must be divisible by 2*partial_channels={2 * partial_channels} "
                    "(the partial-channel FactorizedReduce halves C/K)")
        elif C % 2:
            raise ValueError(f"DartsSuperNet: C must be even (FactorizedReduce halves it), got {C}")
        self.op_names = darts_op_names(ops, exclude_none=exclude_none)
        self.C = C
        self.layers = layers
        self.num_classes = num_classes
        self.steps = steps
        self.multiplier = multiplier
        self.stem_multiplier = stem_multiplier
        self.partial_channels = partial_channels
        self.arch = arch
        self.num_edges = num_darts_edges(steps)

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if i in (layers // 3, 2 * layers // 3):
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            cell = DartsSearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   self.op_names, partial_channels)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        if edge_kind is None:
            edge_kind = "simplex" if arch in ("simplex", "gaea-gdas") else "softmax"
        segs = [2 + i for i in range(steps)] if edge_weights else None
        n_ops = len(self.op_names)
        self.arch_normal = ArchParameters(self.num_edges, n_ops, kind=arch, edge_segments=segs, edge_kind=edge_kind,
                                          tau=tau)
        self.arch_reduce = ArchParameters(self.num_edges, n_ops, kind=arch, edge_segments=segs, edge_kind=edge_kind,
                                          tau=tau)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "DartsSuperNet":
        return cls(C=cfg.channels, layers=cfg.layers, num_classes=num_classes,
                   partial_channels=cfg.partial_channels if cfg.partial_channels > 1 else None,
                   edge_weights=cfg.edge_weights, arch=cfg.arch_kind, exclude_none=cfg.exclude_none,
                   tau=cfg.tau_max)

    # -- the supernet protocol ---------------------------------------------------------------
    def arch_cells(self) -> Dict[str, ArchParameters]:
        return {"normal": self.arch_normal, "reduce": self.arch_reduce}

    def describe(self) -> str:
        pc = f", partial channels 1/{self.partial_channels}" if self.partial_channels else ""
        return f"C={self.C}, {self.layers} cells{pc}"

    @torch.no_grad()
    def derivation_weights(self) -> Dict[str, torch.Tensor]:
        return {name: cell.derivation_weights() for name, cell in self.arch_cells().items()}

    def derive(self, exclude_none: bool = False) -> Genotype:
        """The discrete cells by the DARTS rule (:func:`~gaea_nas.spaces.darts.genotypes.derive_darts_cell`
        over :meth:`derivation_weights`: ``softmax(alpha)`` for DARTS and GDAS, ``theta`` for the
        GAEA kinds, times the edge weights when learned, as ``Architect.get_weights`` does).
        ``none`` is never chosen, so ``exclude_none`` changes nothing."""
        w = self.derivation_weights()
        normal = derive_darts_cell(w["normal"], self.op_names, self.steps)
        reduce = derive_darts_cell(w["reduce"], self.op_names, self.steps)
        concat = range(2 + self.steps - self.multiplier, self.steps + 2)
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)

    @property
    def tau(self) -> float:
        return self.arch_normal.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.set_tau(value)

    def mixing_weights(self):
        """``(op_normal, op_reduce, edge_normal, edge_reduce, sampled_normal, sampled_reduce)`` for
        one forward; GDAS kinds draw a fresh sample of both cell types with one host copy."""
        arches = [self.arch_normal, self.arch_reduce]
        wn, wr = sample_op_weights(arches)
        return (wn, wr, self.arch_normal.edge_weights(), self.arch_reduce.edge_weights(),
                self.arch_normal.sampled_indices(), self.arch_reduce.sampled_indices())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wn, wr, en, er, sn, sr = self.mixing_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, wr, er, sr)
            else:
                s0, s1 = s1, cell(s0, s1, wn, en, sn)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def genotype(self) -> Genotype:
        """The discrete cells (same as :meth:`derive`)."""
        return self.derive()

    @torch.no_grad()
    def load_arch(self, genotype) -> None:
        """Set theta one-hot on a genotype (simplex and gaea-gdas kinds; edge weights to 1): 1 on
        each listed (edge, op), 0 elsewhere, so the supernet computes that discrete cell (up to
        the pools' BN(affine=False)). Accepts anything
        :func:`~gaea_nas.spaces.darts.genotypes.get_genotype` does."""
        if self.arch not in ("simplex", "gaea-gdas"):
            raise ValueError(f"load_genotype needs a simplex parameterisation, this supernet is {self.arch!r}")
        g = get_genotype(genotype, steps=self.steps)
        for arch, pairs in ((self.arch_normal, g.normal), (self.arch_reduce, g.reduce)):
            arch.alpha.copy_(genotype_to_weights(pairs, self.op_names, self.steps))
            if arch.beta is not None:
                arch.beta.fill_(1.0)

    def load_genotype(self, genotype) -> None:
        """Same as :meth:`load_arch`."""
        self.load_arch(genotype)


def copy_cell_to_discrete(search_cell: DartsSearchCell, discrete_cell: nn.Module, pairs: Sequence[tuple]) -> None:
    """Copy the weights of a (full-channel) search cell into the :class:`~gaea_nas.spaces.darts.networks.DiscreteCell`
    of ``pairs`` (the genotype's ``(op, input)`` list of that cell type): the preprocessing and,
    for each pair, the op of its edge. Running BN statistics are copied; the discrete cell's
    affine BN scales/shifts are set to 1/0, which is what ``affine=False`` computes.

    With the arch weights one-hot on the same pairs, the two cells then compute the same
    function, except on pool edges: the supernet follows its pools with ``BN(affine=False)`` and
    the discrete cell does not, so pools are refused with ``ValueError``.
    """
    if search_cell.k is not None:
        raise ValueError("copy_cell_to_discrete: a partial-channel cell has no discrete equivalent")
    pairs = list(pairs)
    if len(pairs) != 2 * search_cell.steps or len(discrete_cell._ops) != len(pairs):
        raise ValueError(f"copy_cell_to_discrete: expected {2 * search_cell.steps} (op, input) pairs "
                         f"matching the discrete cell, got {len(pairs)}")

    def load(dst: nn.Module, src: nn.Module, what: str) -> None:
        res = dst.load_state_dict(src.state_dict(), strict=False)
        if res.unexpected_keys:
            raise ValueError(f"copy_cell_to_discrete: {what}: modules differ ({res.unexpected_keys})")
        for key in res.missing_keys:
            if not (key.endswith(".weight") or key.endswith(".bias")):
                raise ValueError(f"copy_cell_to_discrete: {what}: missing {key}")
            mod = dst.get_submodule(key.rsplit(".", 1)[0])
            if not isinstance(mod, nn.BatchNorm2d):
                raise ValueError(f"copy_cell_to_discrete: {what}: missing {key}")
        with torch.no_grad():
            for m in dst.modules():
                if isinstance(m, nn.BatchNorm2d) and m.affine:
                    src_has = False
                    for key in res.missing_keys:
                        if dst.get_submodule(key.rsplit(".", 1)[0]) is m:
                            src_has = True
                    if src_has:
                        m.weight.fill_(1.0)
                        m.bias.fill_(0.0)

    load(discrete_cell.preprocess0, search_cell.preprocess0, "preprocess0")
    load(discrete_cell.preprocess1, search_cell.preprocess1, "preprocess1")
    for k, (name, inp) in enumerate(pairs):
        if "pool" in name:
            raise ValueError(f"copy_cell_to_discrete: {name!r}: the supernet pool carries a BN(affine=False) "
                             "that the discrete cell lacks; the two are not equivalent")
        if name not in search_cell.op_names:
            raise ValueError(f"copy_cell_to_discrete: op {name!r} is not in the supernet's op list")
        e = edge_index(k // 2, inp)
        src = search_cell.edges[e][search_cell.op_names.index(name)]
        load(discrete_cell._ops[k], src, f"pair {k} ({name}, {inp})")
