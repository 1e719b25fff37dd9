"""Genotypes: literal format and round trip, published registry, DARTS derivation, errors."""
import pytest
import torch

from gaea_nas import genotypes
from gaea_nas.spaces.darts.supernet import DartsSuperNet
from gaea_nas.spaces.darts.genotypes import (
    DARTS_V2,
    PRIMITIVES,
    PUBLISHED,
    Genotype,
    check_genotype,
    derive_darts_cell,
    derive_genotype,
    genotype_to_weights,
    parse_genotype,
)


def test_genotype_fields_and_primitives():
    assert Genotype._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
    assert PRIMITIVES == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                          "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    assert repr(DARTS_V2).startswith(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_round_trip(name):
    g = PUBLISHED[name]
    assert check_genotype(g, steps=4) == g
    text = repr(g)
    assert eval(text, {"Genotype": Genotype}) == g  # the literal DARTS code prints pastes back
    assert parse_genotype(text) == g
    assert parse_genotype(name) is g
    assert len(g.normal) == len(g.reduce) == 8


def test_parse_darts_printed_literal_and_qualified_name():
    text = ("genotypes.Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), "
            "('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
            "('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), "
            "('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))")
    assert parse_genotype(text) == genotypes.PC_DARTS_cifar


@pytest.mark.parametrize("text, match", [
    ("Genotype(normal=[('sep_conv_3x3', 0)", "malformed"),
    ("Network(normal=[])", "expected"),
    ("Genotype(normal=[('sep_conv_3x3', 0)]*8, normal_concat=[2], reduce=[], reduce_concat=[2])", "unsupported"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2], extra=1)", "unknown Genotype field"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "unknown op 'conv_3x3'"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])", "3 \\(op, input\\) pairs"),
    ("__import__('os').system('true')", "expected"),
])
def test_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_genotype(text)


def test_check_genotype_errors():
    with pytest.raises(ValueError, match="4 nodes need 8"):
        check_genotype(DARTS_V2._replace(reduce=DARTS_V2.reduce[:6]), steps=4)
    with pytest.raises(ValueError, match="input index 5"):
        check_genotype(DARTS_V2._replace(normal=DARTS_V2.normal[:7] + [("skip_connect", 5)]))
    with pytest.raises(ValueError, match="concat"):
        check_genotype(DARTS_V2._replace(normal_concat=[2, 3, 9]))
    with pytest.raises(ValueError, match="4-tuple"):
        check_genotype((DARTS_V2.normal,))


def _weights_from_ranked(pairs, strengths, n_ops=8):
    w = torch.zeros(14, n_ops)
    for k, ((name, inp), s) in enumerate(zip(pairs, strengths)):
        node = k // 2
        w[sum(2 + i for i in range(node)) + inp, PRIMITIVES.index(name)] = s
    return w


def test_derive_darts_cell_rule():
    # strongest edge first; `none` never chosen even when it is the largest weight
    w = torch.full((14, 8), 0.01)
    w[0, 0] = 10.0  # none on edge s0->n0: ignored
    w[0, 4] = 0.2
    w[1, 6] = 0.5
    gene = derive_darts_cell(w)
    assert gene[:2] == [("dil_conv_3x3", 1), ("sep_conv_3x3", 0)]
    # ties: the lower input index first, and the lower op index
    assert derive_darts_cell(torch.ones(14, 8))[:4] == [("max_pool_3x3", 0), ("max_pool_3x3", 1),
                                                         ("max_pool_3x3", 0), ("max_pool_3x3", 1)]
    # round trip of a published cell through weights that rank its edges as listed
    strengths = [1.0, 0.9] * 4
    assert derive_darts_cell(_weights_from_ranked(DARTS_V2.normal, strengths)) == DARTS_V2.normal
    # op list without none
    w7 = torch.rand(14, 7)
    assert all(op != "none" for op, _ in derive_darts_cell(w7, PRIMITIVES[1:]))
    with pytest.raises(ValueError, match="shape"):
        derive_darts_cell(torch.rand(13, 8))
    with pytest.raises(ValueError, match="unknown DARTS op"):
        derive_darts_cell(torch.rand(14, 2), ["none", "conv"])
    with pytest.raises(ValueError, match="NaN"):
        derive_darts_cell(torch.full((14, 8), float("nan")))


def test_derive_genotype_gaea_uses_theta_times_edge_weight():
    net = DartsSuperNet(C=4, layers=3, arch="simplex", edge_weights=True)
    with torch.no_grad():
        theta = torch.full((14, 8), 0.1)
        theta[0, 4] = 0.5  # s0->n0: sep_conv_3x3, strong op...
        theta[1, 5] = 0.4  # s1->n0: sep_conv_5x5
        theta[2, 6] = 0.3  # s0->n1 ...
        net.arch_normal.alpha.copy_(theta)
        net.arch_reduce.alpha.copy_(theta)
        beta = net.arch_normal.beta
        beta[0], beta[1] = 0.1, 0.9  # ...but the edge weight flips the ranking of node 0
    g = derive_genotype(net)
    assert g.normal[:2] == [("sep_conv_5x5", 1), ("sep_conv_3x3", 0)]
    assert g.reduce[:2] == [("sep_conv_3x3", 0), ("sep_conv_5x5", 1)]  # reduce beta still uniform
    assert list(g.normal_concat) == [2, 3, 4, 5]
    assert net.genotype() == g


def test_derive_genotype_softmax_ranks_by_softmax():
    # raw alpha would rank edge 0 first (max 5 > 4); softmax(alpha) ranks edge 1 first
    net = DartsSuperNet(C=4, layers=3, arch="softmax")
    with torch.no_grad():
        a = torch.zeros(14, 8)
        a[0, 4] = a[0, 5] = 5.0
        a[1, 6] = 4.0
        net.arch_normal.alpha.copy_(a)
    g = derive_genotype(net)
    assert g.normal[:2] == [("dil_conv_3x3", 1), ("sep_conv_3x3", 0)]


def test_genotype_to_weights_one_hot():
    w = genotype_to_weights(DARTS_V2.normal)
    assert w.shape == (14, 8) and w.sum() == 8
    assert w[0, PRIMITIVES.index("sep_conv_3x3")] == 1  # ('sep_conv_3x3', 0) of node 0
    assert w[13, PRIMITIVES.index("dil_conv_3x3")] == 0 and w[11, PRIMITIVES.index("dil_conv_3x3")] == 1
    with pytest.raises(ValueError, match="not in the op list"):
        genotype_to_weights(DARTS_V2.normal, PRIMITIVES[4:])


def test_derive_genotype_rejects_other_models():
    with pytest.raises(TypeError, match="expected a gaea_nas supernet"):
        derive_genotype(torch.nn.Linear(2, 2))


def test_load_genotype_then_derive_round_trip():
    net = DartsSuperNet(C=4, layers=3, arch="simplex", edge_weights=True)
    net.load_genotype("DARTS_V2")
    g = net.genotype()
    # the same cells; ties between a node's two kept edges list the lower input first
    for got, want in ((g.normal, DARTS_V2.normal), (g.reduce, DARTS_V2.reduce)):
        for k in range(0, 8, 2):
            assert sorted(got[k:k + 2], key=lambda p: p[1]) == sorted(want[k:k + 2], key=lambda p: p[1])
    with pytest.raises(ValueError, match="simplex"):
        DartsSuperNet(C=4, layers=3, arch="softmax").load_genotype(DARTS_V2)


def test_derive_genotype_nb201_dispatch():
    from gaea_nas.spaces.nb201 import NB201SuperNet

    net = NB201SuperNet(C=2, N=1, arch="simplex")
    with torch.no_grad():
        net.arch_normal.alpha.zero_()
        net.arch_normal.alpha[:, 0] = 1.0  # none everywhere...
        net.arch_normal.alpha[:, 3] = 0.5  # ...then nor_conv_3x3
    assert derive_genotype(net) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert derive_genotype(net, exclude_none=True) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
