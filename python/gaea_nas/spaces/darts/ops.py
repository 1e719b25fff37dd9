"""The DARTS / PC-DARTS candidate operations (docs/method.md §4.1 and §4.3).

The op table is data: :data:`DARTS_OP_TABLE` maps each op name, in the order of the DARTS,
PC-DARTS and GAEA repositories (``PRIMITIVES``), to an :class:`~gaea_nas.spaces.op_table.OpSpec`
whose ``build(C, stride, affine)`` makes the op and whose fused kind says how the search
supernet's mixing kernel computes it on stride-1 edges: ``skip_connect`` as ``"skip"``, the
pools (followed by ``BatchNorm2d(affine=False)`` in the search cells) as
``"max_pool_3x3_bn"`` / ``"avg_pool_3x3_bn"``, ``none`` never; the convolutions run as modules.
``OPS[name](C, stride, affine)`` is the same table as plain builders. The
module structure (attribute names, ``nn.Sequential`` layout, ReLU-Conv-BN order, bias-free
convs) follows the reference ``operations.py`` of ``quark0/darts``, so parameter counts match
the reference code exactly and weights can be copied between a supernet edge and a discrete
cell key for key.

- Evaluation networks build ops with ``affine=True``; the search supernet with
  ``affine=False`` and adds ``BatchNorm2d(affine=False)`` after the two pools
  (:func:`search_op`, a :class:`PoolBN`), as the reference search ``MixedOp`` does.
- ``none`` is :class:`Zero` (multiply by 0, subsampling first at stride 2). The supernet never
  runs it: the mixing skips ``none`` and creates no zero tensor.
- ``skip_connect`` is :class:`Identity` at stride 1 and :class:`FactorizedReduce` at stride 2.

Only deviation from the reference, which changes nothing where the reference runs:
:class:`FactorizedReduce` pads odd inputs by one pixel on the right/bottom before the shifted
branch, so odd spatial sizes work (the reference fails on them with a shape mismatch); for even
sizes the computation is identical.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..op_table import OpSpec, fused_kinds

__all__ = [
    "DARTS_OP_TABLE",
    "DARTS_OPS",
    "DARTS_OPS_NOZERO",
    "PRIMITIVES",
    "OPS",
    "ReLUConvBN",
    "DilConv",
    "SepConv",
    "Identity",
    "Zero",
    "FactorizedReduce",
    "PoolBN",
    "build_op",
    "darts_fused_kinds",
    "search_op",
    "darts_op_names",
    "check_op_names",
]


class ReLUConvBN(nn.Module):
    """ReLU, Conv kxk (no bias), BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, depthwise kxk conv with dilation, 1x1 conv, BN (all convs bias-free)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """[ReLU, depthwise kxk, 1x1, BN] twice; the stride is used only in the first depthwise conv."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    """``skip_connect`` at stride 1: returns its input tensor itself."""

    def forward(self, x):
        return x


class Zero(nn.Module):
    """``none``: multiply by 0 (subsample ``[::s, ::s]`` first at stride s)."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), each giving
    C_out/2 channels, concatenated, then BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[2] % 2 or x.shape[3] % 2:
            # odd sizes: pad the shifted view back to the full size (no-op for even sizes)
            shifted = F.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


class PoolBN(nn.Sequential):
    """A search-cell pool followed by ``BatchNorm2d(affine=False)`` (``[pool, bn]``); the fused
    mixing reads the BatchNorm as :attr:`bn`."""

    def __init__(self, pool: nn.Module, C: int):
        super().__init__(pool, nn.BatchNorm2d(C, affine=False))

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]


#: The DARTS op set, index 0..7 (``PRIMITIVES`` of DARTS / PC-DARTS, ``DARTS_OPS`` of GAEA), with
#: ``build(C, stride, affine)`` as in the reference ``operations.py`` and the fused kind of the
#: search cells' op on a stride-1 edge.
DARTS_OP_TABLE: Dict[str, OpSpec] = {
    "none": OpSpec(lambda C, stride, affine: Zero(stride), "none"),
    "max_pool_3x3": OpSpec(lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1), "max_pool_3x3_bn"),
    "avg_pool_3x3": OpSpec(lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
                           "avg_pool_3x3_bn"),
    "skip_connect": OpSpec(_skip, "skip"),
    "sep_conv_3x3": OpSpec(lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine)),
    "sep_conv_5x5": OpSpec(lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine)),
    "dil_conv_3x3": OpSpec(lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine)),
    "dil_conv_5x5": OpSpec(lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine)),
}
DARTS_OPS: List[str] = list(DARTS_OP_TABLE)
#: DARTS-family name for the same list.
PRIMITIVES: List[str] = DARTS_OPS
#: The op set without ``none`` (GAEA's ``search.exclude_zero``: ``DARTS_NOZERO``).
DARTS_OPS_NOZERO: List[str] = [op for op in DARTS_OPS if op != "none"]
#: ``OPS[name](C, stride, affine)``: the candidate ops, as in the reference ``operations.py``.
OPS: Dict[str, Callable[[int, int, bool], nn.Module]] = {name: spec.build for name, spec in DARTS_OP_TABLE.items()}


def check_op_names(op_names: Sequence[str], what: str = "op") -> List[str]:
    """Return ``op_names`` as a list, raising ``ValueError`` for a name not in the DARTS op table."""
    if isinstance(op_names, str):
        raise TypeError(f"expected a sequence of {what} names, got the string {op_names!r}")
    names = list(op_names)
    for name in names:
        if name not in OPS:
            raise ValueError(f"unknown DARTS {what} {name!r}; known ops: {', '.join(DARTS_OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {what} names in {names}")
    if not names:
        raise ValueError(f"empty {what} list")
    return names


def darts_op_names(ops: Optional[Sequence[str]] = None, exclude_none: bool = False) -> List[str]:
    """The op list of a DARTS supernet: ``ops`` (default :data:`DARTS_OPS`), minus ``none`` if asked.

    A fresh list each call (the release edits its module-level list in place; this never does).
    """
    names = check_op_names(DARTS_OPS if ops is None else ops)
    if exclude_none:
        names = [n for n in names if n != "none"]
        if not names:
            raise ValueError("no ops left after dropping 'none'")
    return names


def build_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """One op of the evaluation networks (``OPS[name](C, stride, affine)``); pools have no BN."""
    check_op_names([name])
    return OPS[name](C, stride, affine)


def search_op(name: str, C: int, stride: int) -> nn.Module:
    """One op of the search supernet: ``affine=False`` everywhere and ``BN(affine=False)`` after
    the pools, as in the reference search ``MixedOp``."""
    check_op_names([name])
    op = OPS[name](C, stride, False)
    if "pool" in name:
        op = PoolBN(op, C)
    return op


def darts_fused_kinds(op_names: Sequence[str], stride: int) -> List[str]:
    """The mixing kinds of the search ops ``op_names`` on an edge of ``stride``."""
    return fused_kinds(DARTS_OP_TABLE, op_names, stride == 1)
