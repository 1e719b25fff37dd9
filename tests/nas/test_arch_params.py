"""ArchParameters (gaea_nas.spaces.arch_params) and node mixing (gaea_nas.spaces.mixing)."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn

import gaea_ext
from gaea_nas.spaces import arch_params, mixing
from gaea_nas.spaces.arch_params import ArchParameters, arch_parameters, sample_op_weights, weight_parameters
from gaea_nas.spaces.mixing import mix_node
from gaea_nas.spaces.nb201.ops import Zero


class Toy(nn.Module):
    def __init__(self, kind="simplex"):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.arch_normal = ArchParameters(14, 8, kind, edge_segments=[2, 3, 4, 5])
        self.arch_reduce = ArchParameters(14, 8, kind)


@pytest.mark.parametrize("kind", ["simplex", "gaea-gdas"])
def test_simplex_init_uniform(kind):
    a = ArchParameters(6, 5, kind, edge_segments=[1, 2, 3])
    assert torch.equal(a.alpha.data, torch.full((6, 5), 0.2))
    torch.testing.assert_close(a.edge_weights(), torch.tensor([1, 1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3]))
    if kind == "simplex":
        assert a.op_weights() is a.alpha  # theta used directly, no softmax


def test_softmax_init_and_edge_softmax():
    a = ArchParameters(14, 8, "softmax", edge_segments=[2, 3, 4, 5], edge_kind="softmax")
    assert a.alpha.abs().max() < 0.01 and a.alpha.std() > 0
    torch.testing.assert_close(a.op_weights(), torch.softmax(a.alpha, -1))
    ew = a.edge_weights()
    for s in torch.split(ew, [2, 3, 4, 5]):
        torch.testing.assert_close(s.sum(), torch.tensor(1.0))
    assert ArchParameters(3, 2).edge_weights() is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown kind"):
        ArchParameters(6, 5, "darts")
    with pytest.raises(ValueError, match="edge_kind"):
        ArchParameters(6, 5, edge_segments=[6], edge_kind="relu")
    with pytest.raises(ValueError, match="edge_segments"):
        ArchParameters(6, 5, edge_segments=[2, 3])
    with pytest.raises(ValueError, match="num_ops"):
        ArchParameters(6, 0)


def test_registration_state_dict_pickle_to():
    m = Toy()
    arch, weights = arch_parameters(m), weight_parameters(m)
    assert len(arch) == 3 and len(weights) == 2
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    assert len(arch) + len(weights) == len(list(m.parameters()))
    sd = m.state_dict()
    assert {"arch_normal.alpha", "arch_normal.beta", "arch_reduce.alpha"} <= set(sd)
    with torch.no_grad():
        m.arch_normal.alpha.mul_(2)
    m2 = Toy()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.arch_normal.alpha, m.arch_normal.alpha)
    m3 = pickle.loads(pickle.dumps(m))
    assert torch.equal(m3.arch_normal.alpha, m.arch_normal.alpha) and len(arch_parameters(m3)) == 3
    m4 = copy.deepcopy(m).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in arch_parameters(m4))


def _count_host_reads(monkeypatch):
    counts = {"n": 0}
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


@pytest.mark.parametrize("kind", ["gdas", "gaea-gdas"])
def test_gdas_sample_straight_through(kind):
    a = ArchParameters(6, 5, kind, tau=2.0)
    h = a.op_weights()
    idx = a.sampled_indices()
    assert len(idx) == 6 and idx == h.detach().argmax(-1).tolist()
    assert torch.allclose(h.detach(), torch.nn.functional.one_hot(torch.tensor(idx), 5).float())
    (h * torch.randn(6, 5)).sum().backward()
    assert a.alpha.grad is not None and (a.alpha.grad != 0).all()


def test_gdas_one_host_copy_for_several_cell_types(monkeypatch):
    m = Toy("gdas")
    counts = _count_host_reads(monkeypatch)
    w = sample_op_weights([m.arch_normal, m.arch_reduce])
    assert counts["n"] == 1
    assert [t.shape for t in w] == [(14, 8), (14, 8)]
    assert m.arch_normal.sampled_indices() is not None and m.arch_reduce.sampled_indices() is not None


def test_gdas_frequencies_follow_theta():
    torch.manual_seed(0)
    theta = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows, draws = 500, 16  # 8000 samples: 3.5 sigma < 0.02
    a = ArchParameters(rows, 4, "gaea-gdas", tau=5.0)
    b = ArchParameters(rows, 4, "gdas", tau=0.5)
    with torch.no_grad():
        a.alpha.copy_(theta.expand(rows, 4))
        b.alpha.copy_((theta.log() + 3.0).expand(rows, 4))  # softmax(alpha) == theta
    for m in (a, b):
        counts = torch.zeros(4)
        for _ in range(draws):
            sample_op_weights([m])
            counts += torch.bincount(torch.tensor(m.sampled_indices()), minlength=4)
        torch.testing.assert_close(counts / (rows * draws), theta, atol=0.02, rtol=0)


def test_gdas_resamples_non_finite(monkeypatch):
    a = ArchParameters(6, 5, "gaea-gdas")
    orig = torch.Tensor.exponential_
    calls = {"n": 0}

    def first_zero(self, *args, **kw):
        calls["n"] += 1
        out = orig(self, *args, **kw)
        return out.zero_() if calls["n"] == 1 else out  # -log(0) = inf gumbel on the first draw

    monkeypatch.setattr(torch.Tensor, "exponential_", first_zero)
    h = a.op_weights()
    assert calls["n"] == 2 and torch.isfinite(h).all()
    monkeypatch.setattr(arch_params, "_MAX_RESAMPLES", 5)
    with torch.no_grad():
        a.alpha.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        a.op_weights()


# ------------------------------------------------------------------------------- mixing
# how the mixing computes each op of _edge_ops: the pool counts padded cells, so it runs as a module
KINDS = ["none", "skip", "tensor", "tensor"]


def _edge_ops(n_edges, C=3):
    torch.manual_seed(1)
    return [
        nn.ModuleList([Zero(), nn.Identity(), nn.Conv2d(C, C, 3, padding=1, bias=False), nn.AvgPool2d(3, 1, 1)])
        for _ in range(n_edges)
    ]


def _count_weighted_sum(monkeypatch):
    calls = []
    orig = gaea_ext.weighted_sum

    def wrapped(inputs, weights):
        calls.append((list(inputs), weights))
        return orig(inputs, weights)

    monkeypatch.setattr(gaea_ext, "weighted_sum", wrapped)
    return calls


def test_mix_node_one_fused_call_none_skipped_skip_is_input(monkeypatch):
    monkeypatch.setattr(mixing, "FUSE_PARAMETER_FREE", False)  # the weighted_sum path
    edges = _edge_ops(3)
    xs = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    w = torch.rand(3, 4)
    beta = torch.rand(3)
    zero_calls = []
    for e in edges:
        e[0].register_forward_hook(lambda *a: zero_calls.append(1))
    calls = _count_weighted_sum(monkeypatch)
    out = mix_node(xs, edges, w, beta, kinds=KINDS)
    assert len(calls) == 1 and not zero_calls
    inputs, weights = calls[0]
    assert len(inputs) == 9  # 3 edges x 3 non-none ops
    assert inputs[0] is xs[0] and inputs[3] is xs[1] and inputs[6] is xs[2]  # skip passes x itself
    ref = sum(w[e, o] * beta[e] * edges[e][o](xs[e]) for e in range(3) for o in range(4))
    torch.testing.assert_close(out, ref)
    plain = mix_node(xs, edges, w, beta, kinds=KINDS, use_fused=False)
    assert len(calls) == 1  # the plain path does not use the fused op
    torch.testing.assert_close(plain, out)


def test_mix_node_fuses_parameter_free_ops(monkeypatch):
    """Ops declared skip or 3x3 pool go into one mixed_terms call and are never run as modules;
    "tensor" ops run as modules; "none" never runs."""
    torch.manual_seed(2)
    C = 3
    edges = [nn.ModuleList([Zero(), nn.Identity(), nn.Conv2d(C, C, 3, padding=1, bias=False),
                            nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.MaxPool2d(3, 1, 1),
                            nn.AvgPool2d(3, 1, 1)]) for _ in range(2)]
    kinds = ["none", "skip", "tensor", "avg_pool_3x3", "max_pool_3x3", "tensor"]
    ran = []
    for e in edges:
        for m in (e[3], e[4]):
            m.register_forward_hook(lambda *a: ran.append(1))
    calls = []
    orig = gaea_ext.mixed_terms
    monkeypatch.setattr(gaea_ext, "mixed_terms", lambda *a: calls.append(a[3]) or orig(*a))
    xs = [torch.randn(2, C, 5, 5, requires_grad=True) for _ in range(2)]
    w = torch.rand(2, 6, requires_grad=True)
    out = mix_node(xs, edges, w, kinds=kinds)
    assert len(calls) == 1 and not ran
    assert calls[0] == ["skip", "tensor", "avg_pool_3x3", "max_pool_3x3", "tensor"] * 2
    plain = mix_node(xs, edges, w, kinds=kinds, use_fused=False)
    torch.testing.assert_close(out, plain)
    ga = torch.autograd.grad(out.square().sum(), [*xs, w])
    gb = torch.autograd.grad(plain.square().sum(), [*xs, w])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_mix_node_module_switch(monkeypatch):
    edges = _edge_ops(2)
    xs = [torch.randn(2, 3, 4, 4) for _ in range(2)]
    w = torch.rand(2, 4)
    calls = _count_weighted_sum(monkeypatch)
    monkeypatch.setattr(mixing, "USE_FUSED", False)
    mix_node(xs, edges, w, kinds=KINDS)
    assert not calls


def test_gaea_mixing_linear_in_theta():
    edges = _edge_ops(2)
    xs = [torch.randn(2, 3, 4, 4) for _ in range(2)]
    t1, t2 = torch.rand(2, 4), torch.rand(2, 4)
    f = lambda t: mix_node(xs, edges, t, kinds=KINDS).detach()
    torch.testing.assert_close(f(0.3 * t1 + 0.7 * t2), 0.3 * f(t1) + 0.7 * f(t2))
    torch.testing.assert_close(f(2.0 * t1), 2.0 * f(t1))


def test_mix_node_gradients_reach_theta_and_beta():
    edges = _edge_ops(3)
    xs = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    a = ArchParameters(3, 4, "simplex", edge_segments=[3])
    mix_node(xs, edges, a.op_weights(), a.edge_weights(), kinds=KINDS).square().sum().backward()
    assert (a.alpha.grad[:, 1:] != 0).all() and (a.alpha.grad[:, 0] == 0).all()  # none: no signal
    assert (a.beta.grad != 0).all()


def test_mix_node_gdas_only_sampled_op_runs(monkeypatch):
    edges = _edge_ops(3)
    runs = []
    for e, ops in enumerate(edges):
        for o, op in enumerate(ops):
            op.register_forward_hook(lambda m, i, out, e=e, o=o: runs.append((e, o)))
    xs = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    a = ArchParameters(3, 4, "gaea-gdas", tau=1.0)
    calls = _count_weighted_sum(monkeypatch)
    fused = []
    orig_terms = gaea_ext.mixed_terms
    monkeypatch.setattr(gaea_ext, "mixed_terms", lambda *a: fused.append(a[3]) or orig_terms(*a))
    h = a.op_weights()
    sampled = [2, 0, 3]  # conv, none, pool (count_include_pad=True: not fusable, runs as a module)
    h = torch.nn.functional.one_hot(torch.tensor(sampled), 4).float() - h.detach() + h  # force the sample
    out = mix_node(xs, edges, h, kinds=KINDS, sampled=sampled)
    # one call for the node: the two sampled outputs plus the 0-valued rest as a "ones" term
    assert sorted(runs) == [(0, 2), (2, 3)] and not calls and fused == [["tensor", "tensor", "ones"]]
    torch.testing.assert_close(out, edges[0][2](xs[0]) + edges[2][3](xs[2]))
    out.sum().backward()
    assert (a.alpha.grad != 0).all()  # the zero-valued terms carry gradient to every theta


def test_mix_node_all_none_gives_zero_of_none_op_shape():
    edges = [nn.ModuleList([Zero(stride=2), nn.Identity()]) for _ in range(2)]
    xs = [torch.randn(2, 3, 4, 4) for _ in range(2)]
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    out = mix_node(xs, edges, h, kinds=["none", "skip"], sampled=[0, 0])
    assert out.shape == (2, 3, 2, 2) and not out.any()
    out.sum().backward()
    assert torch.equal(h.grad, torch.tensor([[0.0, 8 * 3.0], [0.0, 8 * 3.0]]))  # 0-valued terms: grad = sum(grad_out)
    only_none = mix_node(xs, [nn.ModuleList([Zero()])] * 2, torch.ones(2, 1), kinds=["none"])
    assert only_none.shape == xs[0].shape and not only_none.any()


def test_mix_node_without_kinds_runs_every_op_as_a_module(monkeypatch):
    edges = _edge_ops(2)
    runs = []
    for ops in edges:
        for o, op in enumerate(ops):
            op.register_forward_hook(lambda m, i, out, o=o: runs.append(o))
    xs = [torch.randn(2, 3, 4, 4) for _ in range(2)]
    w = torch.rand(2, 4)
    out = mix_node(xs, edges, w)
    assert sorted(runs) == [0, 0, 1, 1, 2, 2, 3, 3]
    ref = sum(w[e, o] * edges[e][o](xs[e]) for e in range(2) for o in range(4))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("kinds, error, match", [
    ("skip", TypeError, "not a string"),
    (["skip", "tensor"], ValueError, "2 kinds for 4 ops"),
    ([KINDS, KINDS, KINDS], ValueError, "3 rows for 2 edges"),
    (["none", "skip", "tensor", "conv"], ValueError, "unknown kind 'conv'"),
])
def test_mix_node_bad_kinds(kinds, error, match):
    xs = [torch.randn(1, 3, 4, 4) for _ in range(2)]
    with pytest.raises(error, match=match):
        mix_node(xs, _edge_ops(2), torch.rand(2, 4), kinds=kinds)
