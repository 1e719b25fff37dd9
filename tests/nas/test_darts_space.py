"""DARTS / PC-DARTS / GDAS supernet: shapes, gradients, mixing semantics, PC-DARTS shuffle,
one-hot supernet cell == discrete cell, GDAS single path and one host copy."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn

from gaea_nas import mixing
from gaea_nas.spaces.darts.networks import DiscreteCell
from gaea_nas.spaces.darts.ops import DARTS_OPS, DARTS_OPS_NOZERO
from gaea_nas.spaces.darts.supernet import (
    DartsSearchCell,
    DartsSuperNet,
    channel_shuffle,
    copy_cell_to_discrete,
    edge_index,
)
from gaea_nas.spaces.darts.genotypes import DARTS_V2, Genotype, genotype_to_weights


VARIANTS = [
    dict(arch="simplex"),
    dict(arch="softmax"),
    dict(arch="simplex", edge_weights=True),
    dict(arch="softmax", partial_channels=4, edge_weights=True),  # PC-DARTS
    dict(arch="simplex", partial_channels=4, edge_weights=True),  # GAEA PC-DARTS
    dict(arch="gdas"),
    dict(arch="gaea-gdas", edge_weights=True),
    dict(arch="simplex", exclude_none=True),
]


def _tiny(**kw):
    C = 8 if kw.get("partial_channels") else 4
    return DartsSuperNet(C=C, layers=3, num_classes=5, **kw)


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_forward_backward_shapes_and_grads(kw):
    torch.manual_seed(0)
    model = _tiny(**kw)
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    assert y.shape == (2, 5)
    y.square().sum().backward()
    arch = model.arch_parameters()
    assert len(arch) == (4 if kw.get("edge_weights") else 2)
    for p in arch:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        if p.dim() == 2:  # alpha: every edge row gets a gradient
            assert (p.grad.abs().sum(-1) > 0).all()
        elif "gdas" in kw["arch"]:  # beta of an edge that sampled `none` has a 0 gradient
            assert (p.grad != 0).any()
        else:  # beta: every edge
            assert (p.grad != 0).all()
    if "gdas" not in kw["arch"]:  # GDAS: unsampled ops do not run, so get no gradient
        for p in model.weight_parameters():
            assert p.grad is not None
    expected_ops = len(DARTS_OPS_NOZERO) if kw.get("exclude_none") else len(DARTS_OPS)
    assert model.arch_normal.alpha.shape == (14, expected_ops)


def test_arch_and_weight_parameters_partition_and_state_dict():
    model = _tiny(arch="simplex", edge_weights=True)
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in model.parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in arch}
    assert names == {"arch_normal.alpha", "arch_normal.beta", "arch_reduce.alpha", "arch_reduce.beta"}
    sd = model.state_dict()
    assert torch.equal(sd["arch_normal.alpha"], torch.full((14, 8), 1 / 8))
    # GAEA per-node simplex edge weights start at 1/in-degree
    assert torch.allclose(sd["arch_reduce.beta"], torch.tensor([1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4 + [1 / 5] * 5))
    # pickling / deepcopy keep the arch parameters apart from the weights
    clone = pickle.loads(pickle.dumps(model))
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert len(copy.deepcopy(model).arch_parameters()) == 4
    # PC-DARTS: per-node softmax of logits
    pc = _tiny(arch="softmax", partial_channels=4, edge_weights=True)
    ew = pc.arch_normal.edge_weights()
    for lo, hi in [(0, 2), (2, 5), (5, 9), (9, 14)]:
        assert torch.allclose(ew[lo:hi].sum(), torch.tensor(1.0))


def test_cell_wiring_and_op_table():
    model = _tiny(arch="simplex")
    assert [c.reduction for c in model.cells] == [False, True, True]
    red = model.cells[1]
    assert red.strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]
    assert edge_index(3, 4) == 13 and edge_index(1, 0) == 2
    edge = model.cells[0].edges[0]
    # pools carry BN(affine=False) in the supernet; every BN is affine=False
    assert isinstance(edge[1], nn.Sequential) and isinstance(edge[1][1], nn.BatchNorm2d)
    assert edge[2][0].count_include_pad is False
    assert not any(m.affine for m in model.cells.modules() if isinstance(m, nn.BatchNorm2d))
    # stem BN is affine (as in the reference)
    assert model.stem[1].affine


def _one_hot_cell_check(pairs, reduction, reduction_prev):
    torch.manual_seed(0)
    C = 4
    search = DartsSearchCell(4, 4, 6, 8, C, reduction, reduction_prev, DARTS_OPS)
    discrete = DiscreteCell(pairs, [2, 3, 4, 5], 6, 8, C, reduction, reduction_prev)
    H = 8 if reduction_prev else 4
    s0, s1 = torch.randn(2, 6, H, H), torch.randn(2, 8, 4, 4)
    w = genotype_to_weights(pairs, DARTS_OPS)
    # move the running statistics away from their init, then copy across
    with torch.no_grad():
        for _ in range(2):
            search(torch.randn_like(s0), torch.randn_like(s1), w)
    copy_cell_to_discrete(search, discrete, pairs)
    out_s = search(s0, s1, w)
    out_d = discrete(s0, s1)
    assert out_s.shape == out_d.shape
    torch.testing.assert_close(out_s, out_d, rtol=1e-5, atol=1e-6)
    search.eval()
    discrete.eval()
    torch.testing.assert_close(search(s0, s1, w), discrete(s0, s1), rtol=1e-5, atol=1e-6)


def test_one_hot_supernet_cell_equals_discrete_normal_cell():
    # DARTS_V2's normal cell: sep_conv_3x3, skip_connect, dil_conv_3x3 (no pools)
    _one_hot_cell_check(DARTS_V2.normal, reduction=False, reduction_prev=True)


def test_one_hot_supernet_cell_equals_discrete_reduction_cell():
    pairs = [("sep_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_5x5", 2), ("sep_conv_3x3", 0),
             ("skip_connect", 2), ("dil_conv_3x3", 1), ("sep_conv_3x3", 4), ("skip_connect", 1)]
    _one_hot_cell_check(pairs, reduction=True, reduction_prev=False)


def test_copy_refuses_pools():
    search = DartsSearchCell(4, 4, 8, 8, 4, True, False, DARTS_OPS)
    discrete = DiscreteCell(DARTS_V2.reduce, [2, 3, 4, 5], 8, 8, 4, True, False)
    with pytest.raises(ValueError, match="pool"):
        copy_cell_to_discrete(search, discrete, DARTS_V2.reduce)


def test_gaea_mixing_is_linear_in_theta():
    torch.manual_seed(0)
    cell = DartsSearchCell(1, 1, 4, 4, 4, False, False, DARTS_OPS).eval()  # one node: output = mixing
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    t1, t2 = torch.rand(2, 8), torch.rand(2, 8)
    with torch.no_grad():
        f = lambda t: cell(s0, s1, t)  # noqa: E731
        torch.testing.assert_close(f(0.3 * t1 + 1.7 * t2), 0.3 * f(t1) + 1.7 * f(t2), rtol=1e-5, atol=1e-5)
        # no softmax: doubling theta doubles the output; a one-hot picks exactly one op
        torch.testing.assert_close(f(2 * t1), 2 * f(t1), rtol=1e-6, atol=1e-6)
        e = torch.zeros(2, 8)
        e[1, DARTS_OPS.index("skip_connect")] = 1.0
        torch.testing.assert_close(f(e), cell.preprocess1(s1))
    # the supernet's simplex weights are theta itself, softmax kind applies softmax
    net = _tiny(arch="simplex")
    assert net.arch_normal.op_weights() is net.arch_normal.alpha
    net2 = _tiny(arch="softmax")
    torch.testing.assert_close(net2.arch_normal.op_weights(), torch.softmax(net2.arch_normal.alpha, -1))


def test_fused_matches_plain_path():
    torch.manual_seed(0)
    model = _tiny(arch="softmax", partial_channels=4, edge_weights=True).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = model(x)
        old = mixing.USE_FUSED
        mixing.USE_FUSED = False
        try:
            b = model(x)
        finally:
            mixing.USE_FUSED = old
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channel_shuffle_against_reference():
    x = torch.randn(2, 12, 3, 5)
    ref = x.view(2, 4, 3, 3, 5).transpose(1, 2).contiguous().view(2, 12, 3, 5)
    assert torch.equal(channel_shuffle(x, 4), ref)
    # explicit permutation: output channel c*4 + g <- input channel g*3 + c
    idx = torch.tensor([g * 3 + c for c in range(3) for g in range(4)])
    assert torch.equal(channel_shuffle(x, 4), x[:, idx])
    xcl = x.contiguous(memory_format=torch.channels_last)
    out = channel_shuffle(xcl, 4)
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(torch.randn(1, 6, 2, 2), 4)


def _pc_reference_cell(cell, s0, s1, w, ew):
    """Per-edge PC-DARTS cell in plain PyTorch (yuhuixu1993/PC-DARTS MixedOp + Cell)."""
    def shuffle(t, g):
        b, c, h, ww = t.shape
        return t.view(b, g, c // g, h, ww).transpose(1, 2).contiguous().view(b, c, h, ww)

    s0 = cell.preprocess0(s0)
    s1 = cell.preprocess1(s1)
    states = [s0, s1]
    e = 0
    for _ in range(cell.steps):
        total = 0
        for h in states:
            q = h.shape[1] // 4
            xa, xb = h[:, :q], h[:, q:]
            temp = sum(w[e, o] * op(xa) for o, op in enumerate(cell.edges[e]))
            xb = nn.functional.max_pool2d(xb, 2, 2) if temp.shape[2] != h.shape[2] else xb
            total = total + ew[e] * shuffle(torch.cat([temp, xb], dim=1), 4)
            e += 1
        states.append(total)
    return torch.cat(states[-cell.multiplier:], dim=1)


@pytest.mark.parametrize("reduction", [False, True])
def test_pc_darts_cell_against_per_edge_reference(reduction):
    torch.manual_seed(0)
    cell = DartsSearchCell(4, 4, 16, 16, 8, reduction, False, DARTS_OPS, partial_channels=4).eval()
    s0, s1 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    w = torch.softmax(torch.randn(14, 8), -1)
    ew = torch.rand(14)
    with torch.no_grad():
        got = cell(s0, s1, w, ew)
        want = _pc_reference_cell(cell, s0, s1, w, ew)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 32, 4, 4) if reduction else (2, 32, 8, 8)


@pytest.mark.parametrize("arch", ["gdas", "gaea-gdas"])
def test_gdas_runs_only_sampled_op_and_one_host_copy(arch, monkeypatch):
    torch.manual_seed(0)
    model = _tiny(arch=arch)
    calls = {}

    def hook(mod, inp, out):
        calls[id(mod)] = calls.get(id(mod), 0) + 1

    for cell in model.cells:
        for edge in cell.edges:
            for op in edge:
                op.register_forward_hook(hook)

    copies = {"tolist": 0, "item": 0}
    orig_tolist, orig_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self):
        copies["tolist"] += 1
        return orig_tolist(self)

    def item(self):
        copies["item"] += 1
        return orig_item(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    y = model(torch.randn(2, 3, 8, 8))
    monkeypatch.undo()
    assert copies == {"tolist": 1, "item": 0}
    y.sum().backward()
    sn, sr = model.arch_normal.sampled_indices(), model.arch_reduce.sampled_indices()
    for cell in model.cells:
        sampled = sr if cell.reduction else sn
        for e, edge in enumerate(cell.edges):
            # an op ran if it was called, or (batched convs, which call no module) if its weights got a gradient
            ran = [o for o, op in enumerate(edge)
                   if calls.get(id(op)) or any(p.grad is not None for p in op.parameters())]
            # none runs nothing; stride-1 pools (with their BN) and skips are computed in-kernel
            in_kernel = cell.strides[e] == 1 and DARTS_OPS[sampled[e]] in ("skip_connect", "max_pool_3x3", "avg_pool_3x3")
            expected = [] if DARTS_OPS[sampled[e]] == "none" or in_kernel else [sampled[e]]
            assert ran == expected, (e, ran, sampled[e])
    assert (model.arch_normal.alpha.grad.abs().sum(-1) > 0).all()


def test_gdas_all_none_node_keeps_shape():
    torch.manual_seed(0)
    cell = DartsSearchCell(4, 4, 8, 8, 4, True, False, DARTS_OPS)
    w = torch.zeros(14, 8, requires_grad=True)
    out = cell(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), w, None, sampled=[0] * 14)
    assert out.shape == (2, 16, 4, 4) and torch.equal(out, torch.zeros_like(out))


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = _tiny(arch="simplex", partial_channels=4, edge_weights=True).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert all(p.grad is not None for p in model.arch_parameters())


def test_genotype_method_and_tau():
    model = _tiny(arch="gdas", tau=5.0)
    assert model.tau == 5.0
    model.tau = 1.0
    assert model.arch_normal.tau == model.arch_reduce.tau == 1.0
    g = model.genotype()
    assert isinstance(g, Genotype) and len(g.normal) == 8 and len(g.reduce) == 8


@pytest.mark.parametrize("kw, match", [
    (dict(arch="adam"), "unknown arch"),
    (dict(ops=["none", "conv_7x7"]), "unknown DARTS op"),
    (dict(C=5), "even"),
    (dict(C=12, partial_channels=4), "divisible"),
    (dict(layers=0), "layers"),
    (dict(multiplier=5), "multiplier"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        DartsSuperNet(**kw)
