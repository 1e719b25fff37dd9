"""Batched same-input convolutions and BatchNorms folded into the mixing kernel: the fused
supernets compute the plain PyTorch supernets' function (float64: outputs, every gradient,
BatchNorm running statistics, eval mode), keep their state_dict keys, and issue one convolution
per (node, kernel size) in an NB201 cell; the module switches turn each part off."""
import collections
import copy
import re

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from gaea_nas import DartsSuperNet, NB201SuperNet
from gaea_nas.spaces import mixing
from gaea_nas.spaces.batched_convs import batched_relu_conv_bn, batched_separable_stage, is_relu_conv_bn
from gaea_nas.spaces.darts.ops import DilConv, SepConv
from gaea_nas.spaces.darts.supernet import DartsSearchCell
from gaea_nas.spaces.nb201.supernet import NB201SearchCell


class CountOps(TorchDispatchMode):
    """Counts the aten/custom ops dispatched inside the mode."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _train_and_eval(model, x, fused: bool, seed: int = 5):
    """One training forward + backward (GDAS sample fixed by ``seed``) and one eval forward on
    the fused or the plain mixing path; returns (train out, grads, buffers, eval out)."""
    old = mixing.USE_FUSED
    mixing.USE_FUSED = fused
    try:
        model.train()
        torch.manual_seed(seed)
        y = model(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        model.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            y_eval = model(x)
    finally:
        mixing.USE_FUSED = old
    return y, grads, buffers, y_eval


def _assert_same_function(make_model, x):
    torch.manual_seed(0)
    fused_model = make_model().double()
    plain_model = copy.deepcopy(fused_model)
    y1, g1, b1, e1 = _train_and_eval(fused_model, x, True)
    y2, g2, b2, e2 = _train_and_eval(plain_model, x, False)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-12)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert (g1[name] is None) == (g2[name] is None), name
        if g1[name] is not None:
            torch.testing.assert_close(g1[name], g2[name], rtol=1e-9, atol=1e-11, msg=name)
    for name in b1:
        torch.testing.assert_close(b1[name], b2[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(e1, e2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch,edge_weights", [("simplex", True), ("softmax", False), ("gdas", False),
                                               ("gaea-gdas", False)])
def test_nb201_fused_equals_plain(arch, edge_weights):
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    _assert_same_function(lambda: NB201SuperNet(C=4, N=1, arch=arch, edge_weights=edge_weights), x)


@pytest.mark.parametrize("batch,fold", [(True, True), (True, False), (False, True)])
def test_nb201_switches_keep_the_function(monkeypatch, batch, fold):
    monkeypatch.setattr(mixing, "BATCH_CONVS", batch)
    monkeypatch.setattr(mixing, "TENSOR_BN", fold)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same_function(lambda: NB201SuperNet(C=4, N=1, exclude_none=True), x)


@pytest.mark.parametrize("partial_channels,arch", [(None, "simplex"), (2, "softmax"), (None, "gdas")])
def test_darts_fused_equals_plain(partial_channels, arch):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same_function(lambda: DartsSuperNet(C=4, layers=3, steps=2, multiplier=2, stem_multiplier=1,
                                                partial_channels=partial_channels, arch=arch,
                                                edge_weights=partial_channels is not None), x)


def _cell_convs(cell, sampled=None):
    x = torch.randn(2, 4, 6, 6)
    w = torch.full((6, len(cell.ops)), 1.0 / len(cell.ops))
    with CountOps() as counter:
        cell(x, w, sampled=sampled)
    return counter.calls["convolution"]


def test_nb201_cell_runs_one_conv_per_node_and_kernel_size(monkeypatch):
    cell = NB201SearchCell(4, ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))
    assert _cell_convs(cell) == 6  # 3 source nodes x (1x1, 3x3)
    # GDAS: the sampled convs only, batched per source node and kernel size. Edges 0, 1, 3 leave
    # node 0 (two 1x1s, one 3x3), edge 2 leaves node 1 (a pool), edges 4, 5 (3x3, skip).
    assert _cell_convs(cell, sampled=[2, 2, 4, 3, 3, 1]) == 3
    monkeypatch.setattr(mixing, "BATCH_CONVS", False)
    assert _cell_convs(cell) == 12
    assert _cell_convs(cell, sampled=[2, 2, 4, 3, 3, 1]) == 4
    monkeypatch.setattr(mixing, "BATCH_CONVS", True)
    monkeypatch.setattr(mixing, "USE_FUSED", False)
    assert _cell_convs(cell) == 12


@pytest.mark.parametrize("partial_channels", [None, 2])
def test_darts_cell_takes_one_pool_statistics_pass_per_state(monkeypatch, partial_channels):
    """A normal DARTS cell (steps 4: 14 edges leaving 5 states) computes each BN pool's training
    statistics once per state and pool kind (10), not once per edge (28); the separable and
    dilated convs' folded BatchNorms take one pass per state and op type (20)."""
    ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5"]
    cell = DartsSearchCell(4, 4, 4, 4, 4, False, False, ops, partial_channels)
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    w = torch.full((14, len(ops)), 1.0 / len(ops))

    def stats_passes():
        with CountOps() as counter:
            cell(s0, s1, w)
        return counter.calls["pool_stats"]

    assert stats_passes() == 10 + 20
    monkeypatch.setattr(mixing, "BATCH_CONVS", False)
    assert stats_passes() == 28 + 14 * 4


def test_state_dict_keys_stay_per_edge():
    model = NB201SuperNet(C=4, N=1)
    keys = set(model.state_dict())
    cell_keys = {k for k in keys if re.match(r"cells\.(0|2|4)\.", k)}
    pattern = re.compile(r"cells\.\d\.edges\.[0-5]\.[23]\.(1\.weight|2\.(running_mean|running_var|num_batches_tracked))")
    assert cell_keys and all(pattern.fullmatch(k) for k in cell_keys), sorted(cell_keys)[:5]
    assert len(cell_keys) == 3 * 6 * 2 * 4
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # a batched forward adds nothing
    assert set(model.state_dict()) == keys


def test_batched_relu_conv_bn_matches_the_ops():
    torch.manual_seed(0)
    ops = [nn.Sequential(nn.ReLU(), nn.Conv2d(3, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c, affine=False))
           for c, k in ((2, 1), (5, 3), (4, 1))]
    ops = [op.double() for op in ops]
    plain = copy.deepcopy(ops)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out = batched_relu_conv_bn(x, list(enumerate(ops)))
    for key, op in enumerate(plain):
        torch.testing.assert_close(out[key], op(x))
        torch.testing.assert_close(ops[key][2].running_var, op[2].running_var)
    assert not is_relu_conv_bn(nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3)))
    with pytest.raises(ValueError, match="op 'bad' is not a ReLU-Conv-BN"):
        batched_relu_conv_bn(x, [("bad", nn.Conv2d(3, 3, 1))])


def test_normed_term_materialises_as_batch_norm():
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    mean = y.mean(dim=(0, 2, 3))
    rstd = (y.var(dim=(0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    term = mixing.NormedTerm(y, torch.stack([mean, rstd]))
    torch.testing.assert_close(term.materialise(), nn.functional.batch_norm(y, None, None, training=True))


@pytest.mark.parametrize("stride", [1, 2])
def test_batched_separable_stage_matches_the_ops(stride):
    torch.manual_seed(0)
    ops = [SepConv(3, 3, 3, stride, 1, affine=False), DilConv(3, 3, 5, stride, 4, 2, affine=False),
           SepConv(3, 3, 3, stride, 1, affine=False), DilConv(3, 3, 5, stride, 4, 2, affine=False),
           SepConv(3, 3, 3, stride, 1, affine=False)]
    ops = [op.double() for op in ops]
    plain = copy.deepcopy(ops)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    out = batched_separable_stage(x, list(enumerate(ops)))
    ref = [op(x) for op in plain]
    for key, y in enumerate(ref):
        torch.testing.assert_close(out[key], y)
    grads = [torch.randn_like(y) for y in ref]
    torch.autograd.backward([out[k] for k in range(len(ops))], grads)
    torch.autograd.backward(ref, grads)
    for op, op_ref in zip(ops, plain):
        for p, p_ref in zip(op.parameters(), op_ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad)
        torch.testing.assert_close(op.op[-1].running_mean, op_ref.op[-1].running_mean)
    for key in (1, 2):  # a DilConv and a SepConv, each ending in BatchNorm(affine=False)
        folded = batched_separable_stage(x, [(0, copy.deepcopy(plain[key]))], fold_bn=True)[0]
        assert isinstance(folded, mixing.NormedTerm) and folded.norm.shape == (2, 3)
        torch.testing.assert_close(folded.materialise(), plain[key].op[-1](plain[key].op[:-1](x)))


def test_batched_separable_stage_runs_each_stage_once_for_all_ops():
    """Three SepConvs and two DilConvs on one input: per op type and stage one depthwise conv and
    one batched matmul for the 1x1 convs (SepConv 2 + 2, DilConv 1 + 1), and one statistics pass
    per op type for the folded final BatchNorms."""
    ops = [SepConv(3, 3, 3, 1, 1, affine=False) for _ in range(3)] + [DilConv(3, 3, 5, 1, 4, 2, affine=False)
                                                                       for _ in range(2)]
    x = torch.randn(2, 3, 9, 7)
    with CountOps() as counter:
        out = batched_separable_stage(x, list(enumerate(ops)), fold_bn=True)
    assert counter.calls["convolution"] == 3 and counter.calls["bmm"] == 3
    assert counter.calls["pool_stats"] == 2
    with torch.no_grad():
        for key, op in enumerate(ops):
            torch.testing.assert_close(out[key].materialise(), op.op[-1](op.op[:-1](x)), rtol=1e-4, atol=1e-5)
