"""NAS-Bench-201 op table and building blocks (docs/method.md §4.2).

Ops, in this order: ``none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3``
(:data:`NB201_OP_TABLE`, each entry with its fused kind: ``skip_connect`` is ``"skip"`` and
``avg_pool_3x3`` is ``"avg_pool_3x3"`` in the search cells, the convs run as modules).
``nor_conv_kxk`` = ReLU, Conv kxk (padding (k-1)/2, no bias), BN; ``avg_pool_3x3`` = AvgPool
3x3 (padding 1, count_include_pad=False), with a 1x1 ReLU-Conv-BN first only if C_in != C_out,
and no BN after the pool. Search cells build them with ``affine=False``; the discrete
``TinyNetwork`` cells with ``affine=True``. Running statistics are tracked in both.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ..op_table import OpSpec, fused_kinds

__all__ = [
    "NB201_OP_TABLE",
    "NB201_OPS",
    "NB201_OPS_NOZERO",
    "nb201_fused_kinds",
    "Zero",
    "ReLUConvBN",
    "Pooling",
    "ResNetBasicblock",
    "build_macro",
    "build_nb201_op",
    "check_macro_args",
    "check_nb201_ops",
]


class Zero(nn.Module):
    """The ``none`` op: multiply by 0 (stride s subsamples first). Mixing code never calls it."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv kxk (no bias) -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation=1, affine=True, track_running_stats=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class Pooling(nn.Module):
    """avg_pool_3x3: [1x1 ReLU-Conv-BN if C_in != C_out] -> AvgPool 3x3 (count_include_pad=False)."""

    def __init__(self, C_in, C_out, stride=1, affine=True, track_running_stats=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine, track_running_stats)
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.op(x)


class ResNetBasicblock(nn.Module):
    """NAS-Bench-201 reduction block: ReLU-Conv3x3(stride)-BN, ReLU-Conv3x3-BN (affine BNs);
    shortcut AvgPool(2, 2) + Conv1x1 (no BN) at stride 2. Output = main + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, affine: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicblock: stride must be 1 or 2, got {stride}")
        self.conv_a = ReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1, 1, 1, affine)
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
            )
        elif inplanes != planes:
            self.downsample = ReLUConvBN(inplanes, planes, 1, 1, 0, 1, affine)
        else:
            self.downsample = None
        self.in_dim, self.out_dim, self.stride = inplanes, planes, stride

    def forward(self, x):
        out = self.conv_b(self.conv_a(x))
        residual = x if self.downsample is None else self.downsample(x)
        return residual + out


def _none(C_in: int, C_out: int, stride: int, affine: bool, track_running_stats: bool) -> nn.Module:
    if C_in != C_out:
        raise ValueError("build_nb201_op: 'none' needs C_in == C_out in a NAS-Bench-201 cell")
    return Zero(stride)


def _skip(C_in: int, C_out: int, stride: int, affine: bool, track_running_stats: bool) -> nn.Module:
    if stride != 1 or C_in != C_out:
        raise ValueError("build_nb201_op: 'skip_connect' is the identity; it needs stride 1 and C_in == C_out")
    return nn.Identity()


def _conv(kernel_size: int):
    def build(C_in: int, C_out: int, stride: int, affine: bool, track_running_stats: bool) -> nn.Module:
        return ReLUConvBN(C_in, C_out, kernel_size, stride, (kernel_size - 1) // 2, 1, affine, track_running_stats)
    return build


#: ``NB201_OP_TABLE[name].build(C_in, C_out, stride, affine, track_running_stats)``.
NB201_OP_TABLE: Dict[str, OpSpec] = {
    "none": OpSpec(_none, "none"),
    "skip_connect": OpSpec(_skip, "skip"),
    "nor_conv_1x1": OpSpec(_conv(1)),
    "nor_conv_3x3": OpSpec(_conv(3)),
    "avg_pool_3x3": OpSpec(Pooling, "avg_pool_3x3"),  # the bare pool when C_in == C_out
}
NB201_OPS: Tuple[str, ...] = tuple(NB201_OP_TABLE)
NB201_OPS_NOZERO: Tuple[str, ...] = NB201_OPS[1:]


def build_nb201_op(name: str, C_in: int, C_out: int, stride: int = 1, affine: bool = True, track_running_stats: bool = True) -> nn.Module:
    """One NAS-Bench-201 op. ``skip_connect`` is ``nn.Identity`` (it returns its input tensor)."""
    if name not in NB201_OP_TABLE:
        raise ValueError(f"unknown NAS-Bench-201 op {name!r}; expected one of {list(NB201_OPS)}")
    return NB201_OP_TABLE[name].build(C_in, C_out, stride, affine, track_running_stats)


def nb201_fused_kinds(ops: Sequence[str], C_in: int, C_out: int, stride: int = 1) -> List[str]:
    """The mixing kinds of ``ops`` on an edge (table kinds on stride-1, same-width edges)."""
    return fused_kinds(NB201_OP_TABLE, ops, stride == 1 and C_in == C_out)


def check_nb201_ops(ops: Sequence[str]) -> Tuple[str, ...]:
    """Validate an op list (a subset of NB201_OPS, no duplicates); return it as a tuple."""
    if isinstance(ops, str):
        raise TypeError(f"ops must be a sequence of op names, not the string {ops!r}")
    ops = tuple(ops)
    if not ops:
        raise ValueError("ops must name at least one op")
    for o in ops:
        if o not in NB201_OPS:
            raise ValueError(f"unknown NAS-Bench-201 op {o!r}; expected names from {list(NB201_OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops has duplicates: {list(ops)}")
    return ops


def build_macro(C: int, N: int, make_cell):
    """The NAS-Bench-201 skeleton: stem, [N cells, ResNet block] x2, N cells, with
    ``make_cell(C)`` building each cell; returns (stem, cells, C_prev)."""
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


def check_macro_args(C: int, N: int, num_classes: int) -> None:
    """ValueError unless C, N and num_classes are positive ints."""
    for name, v in (("C", C), ("N", N), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name!r} must be a positive int, got {v!r}")
