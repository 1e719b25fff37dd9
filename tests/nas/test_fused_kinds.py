"""The op tables' fused kinds reach the kernel: the kinds of every term that a supernet's forward
sends to ``gaea_ext::mixed_node``, recorded at the dispatcher, against counts written out here."""
import collections

import pytest
import torch

import gaea_ext
from torch.utils._python_dispatch import TorchDispatchMode

from gaea_ext import reference
from gaea_nas import DartsSuperNet, NB201SuperNet
from gaea_nas.spaces import mixing
from gaea_nas.spaces.darts.ops import DARTS_OP_TABLE
from gaea_nas.spaces.nb201.ops import NB201_OP_TABLE


class RecordKinds(TorchDispatchMode):
    """Counts the term kinds of every ``gaea_ext::mixed_node`` call and the ``weighted_sum`` calls."""

    def __init__(self):
        super().__init__()
        self.kinds = collections.Counter()
        self.weighted_sums = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.gaea_ext.mixed_node.default:
            for code in args[3]:
                self.kinds[reference.MIXED_KINDS[code]] += 1
        elif func is torch.ops.gaea_ext.weighted_sum.default:
            self.weighted_sums += 1
        return func(*args, **(kwargs or {}))


def _record(model, size=8):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    with RecordKinds() as rec:
        model(x)
    return rec


def test_op_tables_declare_fused_kinds():
    assert {n: s.fused_kind for n, s in NB201_OP_TABLE.items()} == {
        "none": "none", "skip_connect": "skip", "nor_conv_1x1": None, "nor_conv_3x3": None,
        "avg_pool_3x3": "avg_pool_3x3"}
    assert {n: s.fused_kind for n, s in DARTS_OP_TABLE.items()} == {
        "none": "none", "max_pool_3x3": "max_pool_3x3_bn", "avg_pool_3x3": "avg_pool_3x3_bn",
        "skip_connect": "skip", "sep_conv_3x3": None, "sep_conv_5x5": None, "dil_conv_3x3": None,
        "dil_conv_5x5": None}


def test_nb201_supernet_kinds_at_the_kernel(monkeypatch):
    # N=1: 3 search cells x 6 edges; per edge skip and avg pool in-kernel, the two convs as tensors
    monkeypatch.setattr(mixing, "TENSOR_BN", False)
    rec = _record(NB201SuperNet(C=4, N=1))
    assert dict(rec.kinds) == {"skip": 18, "avg_pool_3x3": 18, "tensor": 36}
    assert rec.weighted_sums == 0


@pytest.mark.parametrize("partial_channels", [None, 2])
def test_darts_supernet_kinds_at_the_kernel(partial_channels, monkeypatch):
    # 3 cells: one normal (14 stride-1 edges), two reduction cells (6 stride-1 edges, 8 stride-2).
    # Stride-1 edges: skip and the two BN pools in-kernel, the 4 convs as tensors.
    # Stride-2 edges: all 7 non-none ops as tensors, except node 0 of a reduction cell, whose two
    # stride-2 edges have nothing to fuse and go to one weighted_sum instead (2 x 14 tensors).
    monkeypatch.setattr(mixing, "TENSOR_BN", False)
    model = DartsSuperNet(C=8, layers=3, partial_channels=partial_channels, edge_weights=partial_channels is not None)
    rec = _record(model)
    assert dict(rec.kinds) == {"skip": 26, "max_pool_3x3_bn": 26, "avg_pool_3x3_bn": 26,
                               "tensor": 14 * 4 + 2 * (6 * 4 + 6 * 7)}
    assert rec.weighted_sums == 2


needs_tensor_bn = pytest.mark.skipif(not hasattr(gaea_ext, "tensor_batch_norm"), reason="gaea_ext without tensor_bn")


@needs_tensor_bn
def test_nb201_supernet_folds_conv_batch_norms_into_the_kernel():
    rec = _record(NB201SuperNet(C=4, N=1))
    assert dict(rec.kinds) == {"skip": 18, "avg_pool_3x3": 18, "tensor_bn": 36}
    assert rec.weighted_sums == 0


@needs_tensor_bn
@pytest.mark.parametrize("partial_channels", [None, 2])
def test_darts_supernet_folds_conv_batch_norms_into_the_kernel(partial_channels):
    # The 4 separable / dilated convs of every edge end in a BatchNorm the kernel applies; on the
    # 8 stride-2 edges of each reduction cell the two pools and FactorizedReduce stay tensors, and
    # node 0 of a reduction cell joins a fused call too (its conv terms have norms to apply).
    model = DartsSuperNet(C=8, layers=3, partial_channels=partial_channels, edge_weights=partial_channels is not None)
    rec = _record(model)
    assert dict(rec.kinds) == {"skip": 26, "max_pool_3x3_bn": 26, "avg_pool_3x3_bn": 26,
                               "tensor_bn": 14 * 4 + 2 * 14 * 4, "tensor": 2 * 8 * 3}
    assert rec.weighted_sums == 0
