"""DARTS evaluation networks (docs/method.md §4.3): ``NetworkCIFAR`` and ``NetworkImageNet``.

Built as the reference ``quark0/darts cnn/model.py``: same modules, same attribute names
(``stem``/``stem0``/``stem1``, ``cells``, ``auxiliary_head``, ``global_pooling``,
``classifier``), same parameter counts. ``forward`` returns ``(logits, logits_aux)``;
``logits_aux`` is ``None`` unless the network is in training mode with ``auxiliary=True``.

Parameter counts are quoted without the auxiliary head: every one of its parameters is named
``auxiliary_head.*`` (``count_parameters(model, exclude_auxiliary=True)``).

Differences from the reference (none changes a parameter or the computation at the reference's
input sizes, 32x32 and 224x224):

- ``NetworkImageNet`` pools globally with ``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(7)``
  (identical on the 7x7 map of a 224 input; also works for other sizes).
- Drop path is fused into each node's sum by default (``fused_drop_path=True``):
  ``gaea_ext.drop_path_sum`` draws the same per-sample masks, in the same order, as
  ``drop_path`` and weights the two op outputs by mask / (1 - p) in one pass, without
  materialising the dropped tensors (docs/porting.md, "Fused drop path").
  ``fused_drop_path=False`` runs ``drop_path`` on each op output and adds them.
- ``drop_path`` is out of place (the reference modifies the op output in place), and the ReLUs
  that open the auxiliary heads and ``stem1`` are out of place (the reference's in-place ones
  also rewrite the trunk tensor they read, which only the next cell's leading ReLU hides).
- ``FactorizedReduce`` also accepts odd sizes (see :mod:`gaea_nas.spaces.darts.ops`).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from gaea_ext import drop_path_sum

from .ops import FactorizedReduce, Identity, ReLUConvBN, build_op
from .genotypes import Genotype, get_genotype

__all__ = [
    "drop_path",
    "DiscreteCell",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "NetworkCIFAR",
    "NetworkImageNet",
]


def drop_path(x: torch.Tensor, drop_prob: Union[float, torch.Tensor]) -> torch.Tensor:
    """Zero each sample with probability ``drop_prob`` and rescale the rest by ``1/(1-p)``.

    ``drop_prob``: a float, or a 0-d float64 tensor on ``x``'s device (the same masks and
    scales, without torch.compile specialising on the value; the mask is then drawn even at 0).
    """
    if not isinstance(drop_prob, torch.Tensor) and drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class DiscreteCell(nn.Module):
    """A fixed DARTS cell: node i = op_a(state a) + op_b(state b) from the genotype's pairs.

    In training with ``drop_prob`` > 0 every op output but the identities goes through drop
    path: fused into the node's sum (``gaea_ext.drop_path_sum``) when ``fused_drop_path``
    (the default, also an attribute that may be changed), else ``drop_path`` per op output.
    Both draw the same masks from the global generator, in the same order. ``drop_prob`` may
    be a 0-d float64 tensor (the networks pass theirs, see :class:`NetworkCIFAR`): then drop
    path runs in training whatever its value.
    """

    def __init__(self, pairs: Sequence[tuple], concat: Sequence[int], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, fused_drop_path: bool = True):
        super().__init__()
        self.fused_drop_path = fused_drop_path
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        op_names, indices = zip(*pairs)
        self.reduction = reduction
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = list(indices)
        self._ops = nn.ModuleList()
        for name, index in zip(op_names, indices):
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(build_op(name, C, stride, affine=True))
        # Drop path skips the identities, as in the reference.
        self._droppable = [not isinstance(op, Identity) for op in self._ops]

    def forward(self, s0, s1, drop_prob: Union[float, torch.Tensor] = 0.0):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        for i in range(self._steps):
            op1, op2 = self._ops[2 * i], self._ops[2 * i + 1]
            h1 = op1(states[self._indices[2 * i]])
            h2 = op2(states[self._indices[2 * i + 1]])
            if self.fused_drop_path:
                states.append(drop_path_sum([h1, h2], drop_prob, self.training, drop=self._droppable[2 * i:2 * i + 2]))
            else:
                if self.training and (isinstance(drop_prob, torch.Tensor) or drop_prob > 0.0):
                    if not isinstance(op1, Identity):
                        h1 = drop_path(h1, drop_prob)
                    if not isinstance(op2, Identity):
                        h2 = drop_path(h2, drop_prob)
                states.append(h1 + h2)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """For 8x8 inputs: ReLU, AvgPool 5/3 (8x8 -> 2x2), 1x1 conv 128 + BN + ReLU, 2x2 conv 768 + BN + ReLU, Linear."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # out of place: its input is the trunk's cell output
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """For 7x7 inputs: ReLU, AvgPool 5/2, 1x1 conv 128 + BN + ReLU, 2x2 conv 768 + ReLU (no BN, as
    in the reference code that produced the published results), Linear."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # out of place: its input is the trunk's cell output
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))


def _check_args(C: int, num_classes: int, layers: int) -> None:
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    if not isinstance(C, int) or C < 2 or C % 2:
        raise ValueError(f"C must be an even int >= 2 (FactorizedReduce halves it), got {C!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


class _DartsNetwork(nn.Module):
    """The cells and the drop-path probability shared by the CIFAR and ImageNet networks.

    ``drop_path_prob`` (a float property, set per epoch by a training loop) is kept for the
    forward as a 0-d float64 tensor that the keep masks read, so a compiled network is not
    recompiled when it changes; only whether it is positive is a Python value of the forward
    (one recompile when drop path turns on). The tensor is a buffer (it follows ``.to(device)``;
    not in the state dict) holding the float64's bits in an int64, so ``.float()`` / ``.half()``
    do not round it: the masks and scales equal those of the float. (An ``AveragedModel`` with
    ``use_buffers=True`` averages those bits as it averages BatchNorm's counters; its copy is
    run in eval mode, where drop path is off.)
    """

    def _init_drop_path(self, drop_path_prob: float) -> None:
        self.register_buffer("_drop_path_bits", torch.zeros((), dtype=torch.int64), persistent=False)
        self.drop_path_prob = drop_path_prob

    @property
    def drop_path_prob(self) -> float:
        """The drop-path probability, in [0, 1)."""
        return self._drop_path_value

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {value!r}")
        self._drop_path_value = value
        self._drop_path_on = value > 0.0
        self._drop_path_bits.copy_(torch.tensor(value, dtype=torch.float64).view(torch.int64))

    def _drop_prob_for_cells(self) -> Union[float, torch.Tensor]:
        return self._drop_path_bits.view(torch.float64) if self._drop_path_on else 0.0

    def _build_cells(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C_curr: int, layers: int,
                     reduction_prev: bool, fused_drop_path: bool):
        self.cells = nn.ModuleList()
        C_to_auxiliary = None
        for i in range(layers):
            if i in (layers // 3, 2 * layers // 3):
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else \
                (genotype.normal, genotype.normal_concat)
            cell = DiscreteCell(pairs, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                fused_drop_path=fused_drop_path)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        return C_prev, C_to_auxiliary

    def _run_cells(self, s0, s1):
        logits_aux = None
        drop_prob = self._drop_prob_for_cells()
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_DartsNetwork):
    """DARTS CIFAR evaluation network: stem Conv3x3(3 -> 3C) + BN, ``layers`` cells (reductions at
    ``layers//3`` and ``2*layers//3``), auxiliary head after cell ``2*layers//3``, GAP + Linear.

    ``genotype``: a :class:`Genotype`, a published name (``"DARTS_V2"``) or a printed literal.
    Set ``model.drop_path_prob`` per epoch as the reference training loop does.
    ``fused_drop_path``: drop path fused into the nodes' sums (default) or per op output
    (:class:`DiscreteCell`).
    """

    def __init__(self, C: int = 36, num_classes: int = 10, layers: int = 20, auxiliary: bool = True,
                 genotype: Union[Genotype, str] = "DARTS_V2", drop_path_prob: float = 0.0,
                 stem_multiplier: int = 3, fused_drop_path: bool = True):
        super().__init__()
        _check_args(C, num_classes, layers)
        genotype = get_genotype(genotype)
        self.genotype = genotype
        self._layers = layers
        self._auxiliary = auxiliary
        self._init_drop_path(drop_path_prob)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev, C_to_auxiliary = self._build_cells(genotype, C_curr, C_curr, C, layers, reduction_prev=False,
                                                   fused_drop_path=fused_drop_path)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        out, logits_aux = self._run_cells(s0, s1)
        out = self.global_pooling(out)
        return self.classifier(out.flatten(1)), logits_aux


class NetworkImageNet(_DartsNetwork):
    """DARTS ImageNet evaluation network: stem0 (two stride-2 convs), stem1 (one), ``layers``
    cells (the first treats its predecessor as a reduction), auxiliary head, 7x7 pool + Linear.
    ``fused_drop_path`` as for :class:`NetworkCIFAR`."""

    def __init__(self, C: int = 48, num_classes: int = 1000, layers: int = 14, auxiliary: bool = True,
                 genotype: Union[Genotype, str] = "DARTS_V2", drop_path_prob: float = 0.0,
                 fused_drop_path: bool = True):
        super().__init__()
        _check_args(C, num_classes, layers)
        genotype = get_genotype(genotype)
        self.genotype = genotype
        self._layers = layers
        self._auxiliary = auxiliary
        self._init_drop_path(drop_path_prob)
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),  # out of place: s0 also feeds the first cell
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev, C_to_auxiliary = self._build_cells(genotype, C, C, C, layers, reduction_prev=True,
                                                   fused_drop_path=fused_drop_path)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, logits_aux = self._run_cells(s0, s1)
        out = self.global_pooling(out)
        return self.classifier(out.flatten(1)), logits_aux
