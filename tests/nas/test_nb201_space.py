"""NAS-Bench-201 space: arch strings, NB201SuperNet, NB201Network (gaea_nas.spaces.nb201)."""
import copy
import itertools
import pickle

import pytest
import torch
import torch.nn as nn

from gaea_nas import mixing
from gaea_nas.spaces.arch_params import ArchParameters
from gaea_nas.spaces.nb201.ops import NB201_OPS, Zero
from gaea_nas.spaces.nb201 import (
    NB201Network,
    NB201SearchCell,
    NB201SuperNet,
    all_nb201_archs,
    arch_nodes,
    copy_supernet_weights,
    derive_nb201_arch,
    format_arch,
    is_valid_arch,
    parse_arch,
)

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
KINDS = ["simplex", "softmax", "gdas", "gaea-gdas"]
SMALL = dict(C=4, N=1)


def _x(b=2, hw=8):
    return torch.randn(b, 3, hw, hw)


# ------------------------------------------------------------------------- arch strings
def test_round_trip_all_cells():
    seen = set()
    for combo in itertools.product(NB201_OPS, repeat=6):
        s = "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*combo)
        ops = parse_arch(s)
        assert ops == list(combo)
        assert format_arch(ops) == s
        seen.add(s)
    assert len(seen) == 15625
    assert set(all_nb201_archs()) == seen


def test_parse_example_and_node_forms():
    assert parse_arch(ARCH) == ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect"]
    nodes = arch_nodes(ARCH)
    assert nodes[2] == [("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2)]
    # inputs listed in another order are accepted and normalised
    assert format_arch("|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_3x3~0|+|skip_connect~2|skip_connect~0|nor_conv_3x3~1|") == ARCH


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nor_conv_3x3",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",  # two nodes
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # node 2 misses input 1
        "|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # input 1 into node 1
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",  # duplicate input
        "|nor_conv_3x3-0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        "nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        ["skip_connect"] * 5,
    ],
)
def test_malformed_arch_raises(bad):
    with pytest.raises(ValueError, match="malformed|arch must be"):
        parse_arch(bad)


def test_unknown_op_raises():
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 op 'sep_conv_3x3'"):
        parse_arch(ARCH.replace("avg_pool_3x3", "sep_conv_3x3"))
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 op"):
        parse_arch(["conv"] * 6)
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 op"):
        NB201SuperNet(ops=["none", "conv5x5"], **SMALL)
    with pytest.raises(TypeError):
        parse_arch(42)


def test_validity():
    assert is_valid_arch(ARCH)
    assert not is_valid_arch(["none"] * 6)
    # node 3 reads only node 2, whose only live path is from node 1, which is cut off
    assert not is_valid_arch("|none~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_3x3~2|")
    assert is_valid_arch("|none~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_3x3~2|")
    assert is_valid_arch("|none~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert not all(is_valid_arch(list(c)) for c in itertools.product(["none", "skip_connect"], repeat=6))


# ------------------------------------------------------------------------- supernet
@pytest.mark.parametrize("kind", KINDS)
def test_supernet_forward_backward_grads(kind):
    m = NB201SuperNet(arch=kind, **SMALL)
    y = m(_x())
    assert y.shape == (2, 10)
    y.square().sum().backward()
    (alpha,) = m.arch_parameters()
    assert alpha.shape == (6, 5) and alpha.grad is not None
    if kind in ("simplex", "softmax"):
        assert (alpha.grad[:, 1:] != 0).all()  # every op (none carries no signal for theta)
    else:
        assert (alpha.grad != 0).any(dim=1).all()
    if kind in ("simplex", "softmax"):  # every op ran; GDAS runs only the sampled ones
        assert all(p.grad is not None for p in m.weight_parameters())


def test_supernet_edge_weights_and_exclude_none():
    m = NB201SuperNet(arch="simplex", exclude_none=True, edge_weights=True, num_classes=7, **SMALL)
    assert m.ops == NB201_OPS[1:] and not any(isinstance(x, Zero) for x in m.modules())
    m(_x()).sum().backward()
    alpha, beta = m.arch_parameters()
    assert alpha.shape == (6, 4) and beta.shape == (6,)
    assert (alpha.grad != 0).all() and (beta.grad != 0).all()
    torch.testing.assert_close(beta.detach(), torch.tensor([1, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))


def test_supernet_bad_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        NB201SuperNet(arch="darts", **SMALL)


def test_arch_weight_split_and_persistence():
    m = NB201SuperNet(arch="softmax", **SMALL)
    arch, weights = m.arch_parameters(), m.weight_parameters()
    assert len(arch) == 1 and len(arch) + len(weights) == len(list(m.parameters()))
    assert "arch_normal.alpha" in m.state_dict()
    m2 = NB201SuperNet(arch="softmax", **SMALL)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.arch_normal.alpha, m.arch_normal.alpha)
    m3 = pickle.loads(pickle.dumps(m))
    assert torch.equal(m3.arch_parameters()[0], m.arch_normal.alpha)
    m4 = copy.deepcopy(m).to(torch.float64)
    assert m4.arch_parameters()[0].dtype == torch.float64
    assert m4(_x().double()).dtype == torch.float64


def test_supernet_under_ddp(tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        m = NB201SuperNet(C=2, N=1)
        ddp = nn.parallel.DistributedDataParallel(m)
        ddp(_x()).sum().backward()
        assert m.arch_normal.alpha.grad is not None
        assert "module.arch_normal.alpha" in ddp.state_dict()
    finally:
        dist.destroy_process_group()


def _calibrate(m, steps=2):
    m.train()
    with torch.no_grad():
        for _ in range(steps):
            m(_x(4))
    m.eval()


@pytest.mark.parametrize(
    "arch",
    [
        ARCH,
        "|none~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|skip_connect~1|nor_conv_3x3~2|",
        "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    ],
)
def test_one_hot_supernet_equals_network(arch):
    torch.manual_seed(0)
    sup = NB201SuperNet(arch="simplex", **SMALL)
    sup.load_arch(arch)
    _calibrate(sup)  # BN running statistics that are not the defaults
    net = copy_supernet_weights(sup, NB201Network(arch, **SMALL)).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(sup(x), net(x), rtol=1e-5, atol=1e-6)


def test_one_hot_supernet_equals_network_without_none():
    sup = NB201SuperNet(arch="gaea-gdas", exclude_none=True, **SMALL)
    sup.load_arch(ARCH)
    _calibrate(sup, 1)
    net = copy_supernet_weights(sup, NB201Network(ARCH, **SMALL)).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(sup(x), net(x), rtol=1e-5, atol=1e-6)  # one-hot theta: always that cell


def test_load_arch_errors():
    with pytest.raises(ValueError, match="simplex"):
        NB201SuperNet(arch="softmax", **SMALL).load_arch(ARCH)
    with pytest.raises(ValueError, match="not in this supernet"):
        NB201SuperNet(exclude_none=True, **SMALL).load_arch(["none"] * 6)


def test_fused_and_plain_paths_agree(monkeypatch):
    m = NB201SuperNet(arch="simplex", **SMALL)
    with torch.no_grad():
        m.arch_normal.alpha.copy_(torch.rand(6, 5))
    m.eval()
    x = _x()
    calls = []
    orig = mixing.gaea_ext.mixed_terms
    monkeypatch.setattr(mixing.gaea_ext, "mixed_terms", lambda xs, ys, w, k, *rest: calls.append(len(k)) or orig(xs, ys, w, k, *rest))
    fused = m(x)
    assert calls == [4, 8, 12] * 3  # one call per node: 1, 2, 3 edges x 4 non-none ops
    ws_calls = []
    orig_ws = mixing.gaea_ext.weighted_sum
    monkeypatch.setattr(mixing.gaea_ext, "weighted_sum", lambda i, w: ws_calls.append(len(i)) or orig_ws(i, w))
    monkeypatch.setattr(mixing, "FUSE_PARAMETER_FREE", False)
    torch.testing.assert_close(m(x), fused)
    assert ws_calls == [4, 8, 12] * 3 and len(calls) == 9  # pools as modules, one weighted_sum per node
    monkeypatch.setattr(mixing, "USE_FUSED", False)
    torch.testing.assert_close(m(x), fused)
    assert len(calls) == 9 and len(ws_calls) == 9


def _count_host_reads(monkeypatch):
    counts = {"n": 0}
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


@pytest.mark.parametrize("kind", ["gdas", "gaea-gdas"])
def test_gdas_supernet_runs_only_sampled_ops_one_host_copy(kind, monkeypatch):
    # ops run one by one, so each ReLU-Conv-BN calls its BN module (the batched convs and the
    # BN folded into the kernel call none; tests/nas/test_batched_convs.py counts their convs)
    monkeypatch.setattr(mixing, "BATCH_CONVS", False)
    monkeypatch.setattr(mixing, "TENSOR_BN", False)
    m = NB201SuperNet(arch=kind, C=4, N=2)
    with torch.no_grad():  # make `none` likely, so all-none nodes occur too
        m.arch_normal.alpha[:, 0] += 1.0 if kind == "gdas" else 0.5
    runs = {}
    for ci, cell in enumerate(m.cells):
        if isinstance(cell, NB201SearchCell):
            for e, ops in enumerate(cell.edges):
                for o, op in enumerate(ops):
                    # the last layer: a ReLU-Conv-BN runs layer by layer (sharing the edge's ReLU)
                    probe = op[-1] if isinstance(op, nn.Sequential) else op
                    probe.register_forward_hook(lambda mod, i, out, key=(ci, e, o): runs.__setitem__(key, runs.get(key, 0) + 1))
    counts = _count_host_reads(monkeypatch)
    for _ in range(4):
        runs.clear()
        counts["n"] = 0
        y = m(_x())
        assert counts["n"] == 1  # the sampled indices of all edges, in one copy
        sampled = m.arch_normal.sampled_indices()
        expected = {}
        for ci, cell in enumerate(m.cells):
            if isinstance(cell, NB201SearchCell):
                for a, b in ((0, 1), (1, 3), (3, 6)):
                    for e in range(a, b):  # skips and pools are computed in-kernel, not run
                        if NB201_OPS[sampled[e]] in ("nor_conv_1x1", "nor_conv_3x3"):
                            expected[(ci, e, sampled[e])] = 1
                    if all(sampled[e] == 0 for e in range(a, b)):  # an all-`none` node is a zero tensor
                        expected[(ci, a, 0)] = 1
        assert runs == expected  # only the sampled op of each edge ran
        y.sum().backward()
    assert m.arch_normal.alpha.grad is not None


def test_derive_arch():
    m = NB201SuperNet(arch="simplex", **SMALL)
    target = ["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]
    with torch.no_grad():
        w = torch.full((6, 5), 0.1)
        for e, o in enumerate(target):
            w[e, NB201_OPS.index(o)] = 0.5
        w[1, NB201_OPS.index("nor_conv_1x1")] = 0.3
        m.arch_normal.alpha.copy_(w)
    assert derive_nb201_arch(m) == format_arch(target) == m.genotype()
    with_excl = list(target)
    with_excl[1] = "nor_conv_1x1"
    with_excl[5] = "skip_connect"  # first of the tied non-none ops
    assert derive_nb201_arch(m, exclude_none=True) == format_arch(with_excl)
    assert derive_nb201_arch(w) == format_arch(target)
    assert derive_nb201_arch(w[:, 1:], ops=NB201_OPS[1:]) == format_arch(with_excl)
    with pytest.raises(ValueError, match=r"\[6, 5\]"):
        derive_nb201_arch(torch.rand(6, 4))
    # GAEA with edge weights: theta * beta
    a = ArchParameters(6, 5, "simplex", edge_segments=[1, 2, 3])
    assert derive_nb201_arch(a) == format_arch(["none"] * 6)


def test_network_forward_backward_and_repr():
    net = NB201Network(ARCH, C=4, N=1, num_classes=5)
    y = net(_x())
    assert y.shape == (2, 5)
    y.sum().backward()
    assert net.arch_str == ARCH and ARCH in repr(net)
    with pytest.raises(ValueError, match="malformed"):
        NB201Network("|conv~0|", C=4, N=1)


def test_channels_last_and_bf16_autocast():
    m = NB201SuperNet(arch="simplex", C=4, N=1).to(memory_format=torch.channels_last)
    x = _x().to(memory_format=torch.channels_last)
    y = m(x)
    assert y.shape == (2, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m(x)
        yn = NB201Network(ARCH, C=4, N=1).to(memory_format=torch.channels_last)(x)
    assert yb.dtype == torch.bfloat16 and yn.dtype == torch.bfloat16
    yb.float().sum().backward()
    assert m.arch_normal.alpha.grad is not None and torch.isfinite(m.arch_normal.alpha.grad).all()
    torch.testing.assert_close(yb.float(), y, atol=0.15, rtol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests need a GPU")
def test_gdas_one_device_sync_per_forward_cuda():
    import warnings

    m = NB201SuperNet(arch="gaea-gdas", C=4, N=1).cuda()
    x = _x().cuda()
    m(x)  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
