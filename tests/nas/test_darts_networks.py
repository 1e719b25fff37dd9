"""DARTS evaluation networks: shapes, auxiliary head, drop path, published parameter counts."""
import pytest
import torch
import torch.nn as nn

from gaea_nas import genotypes
from gaea_nas.spaces.darts.networks import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    DiscreteCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
)
from gaea_nas.spaces.darts.ops import FactorizedReduce, Identity


def n_params(model, aux=False):
    return sum(p.numel() for n, p in model.named_parameters() if aux or "auxiliary" not in n)


# Exact counts of the reference quark0/darts model.py (auxiliary head excluded; its
# count_parameters_in_MB prints e.g. "param size = 3.349342MB" for DARTS_V2 on CIFAR-10).
@pytest.mark.parametrize("net, genotype, expected, published", [
    ("cifar", "DARTS_V2", 3_349_342, 3.3),
    ("cifar", "PC_DARTS_cifar", 3_634_678, 3.6),
    ("imagenet", "DARTS_V2", 4_718_752, 4.7),
    ("imagenet", "PC_DARTS_image", 5_342_464, 5.3),
])
def test_published_parameter_counts(net, genotype, expected, published):
    if net == "cifar":
        model = NetworkCIFAR(36, 10, 20, True, getattr(genotypes, genotype))
    else:
        model = NetworkImageNet(48, 1000, 14, True, getattr(genotypes, genotype))
    count = n_params(model)
    assert round(count / 1e6, 1) == published
    assert count == expected
    assert n_params(model, aux=True) > count  # the auxiliary head exists and is excluded


def test_network_cifar_forward_backward_and_aux():
    torch.manual_seed(0)
    model = NetworkCIFAR(C=4, num_classes=10, layers=5, auxiliary=True, genotype=genotypes.PC_DARTS_cifar,
                         drop_path_prob=0.2)
    assert [c.reduction for c in model.cells] == [False, True, False, True, False]
    assert isinstance(model.cells[2].preprocess0, FactorizedReduce)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        logits, aux = model(x)
    assert logits.shape == (2, 10) and aux is None


def test_network_imagenet_forward():
    torch.manual_seed(0)
    model = NetworkImageNet(C=8, num_classes=7, layers=3, auxiliary=True, genotype="DARTS_V2")
    assert isinstance(model.cells[0].preprocess0, FactorizedReduce)  # stem counts as a reduction
    logits, aux = model(torch.randn(2, 3, 224, 224))  # the aux head needs the 7x7 map of a 224 input
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    logits.sum().backward()
    model.eval()
    with torch.no_grad():
        logits, aux = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and aux is None


def test_auxiliary_heads_structure():
    cifar = AuxiliaryHeadCIFAR(16, 10)
    imnet = AuxiliaryHeadImageNet(16, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cifar.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in imnet.modules()) == 1  # no BN after the 2x2 conv
    assert cifar(torch.randn(2, 16, 8, 8)).shape == (2, 10)
    assert imnet(torch.randn(2, 16, 7, 7)).shape == (2, 10)
    pool = cifar.features[1]
    assert (pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad) == (5, 3, 0, False)


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 1, 1)
    y = drop_path(x, 0.3)
    kept = y[:, 0, 0, 0] != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert 0.6 < kept.float().mean() < 0.8
    assert drop_path(x, 0.0) is x
    # identities are never dropped: a cell of skip connections is unchanged at any drop rate
    pairs = [("skip_connect", 0), ("skip_connect", 1)] * 4
    cell = DiscreteCell(pairs, [2, 3, 4, 5], 4, 4, 4, reduction=False, reduction_prev=False)
    assert all(isinstance(op, Identity) for op in cell._ops)
    s0, s1 = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(cell(s0, s1, 0.9), cell(s0, s1, 0.0))
    # non-identity ops are dropped per sample in training only
    conv_cell = DiscreteCell([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4, [2, 3, 4, 5], 4, 4, 4, False, False)
    torch.manual_seed(1)
    a = conv_cell(s0, s1, 0.5)
    torch.manual_seed(2)
    b = conv_cell(s0, s1, 0.5)
    assert not torch.equal(a, b)
    conv_cell.eval()
    torch.testing.assert_close(conv_cell(s0, s1, 0.5), conv_cell(s0, s1, 0.0))


def test_genotype_inputs_and_errors():
    literal = repr(genotypes.DARTS_V2)
    a = NetworkCIFAR(4, 10, 3, False, literal)
    assert a.genotype == genotypes.DARTS_V2
    with pytest.raises(ValueError, match="unknown op"):
        NetworkCIFAR(4, 10, 3, False, genotypes.Genotype([("conv_9x9", 0), ("skip_connect", 1)], [2],
                                                         [("skip_connect", 0), ("skip_connect", 1)], [2]))
    with pytest.raises(ValueError, match="pairs"):
        NetworkCIFAR(4, 10, 3, False, genotypes.DARTS_V2._replace(normal=genotypes.DARTS_V2.normal[:7]))
    with pytest.raises(ValueError, match="input index"):
        NetworkCIFAR(4, 10, 3, False, genotypes.DARTS_V2._replace(normal=[("skip_connect", 2)] * 8))
    with pytest.raises(ValueError, match="C must be"):
        NetworkCIFAR(5, 10, 3, False, "DARTS_V2")
    with pytest.raises(ValueError, match="published cell name|expected"):
        NetworkImageNet(8, 10, 3, False, "NOT_A_CELL")


def test_odd_spatial_factorized_reduce():
    fr = FactorizedReduce(4, 8)
    assert fr(torch.randn(2, 4, 7, 7)).shape == (2, 8, 4, 4)
    # even sizes: exactly the reference computation (second branch on x[:, :, 1:, 1:])
    x = torch.randn(2, 4, 6, 6)
    ref = fr.bn(torch.cat([fr.conv_1(torch.relu(x)), fr.conv_2(torch.relu(x)[:, :, 1:, 1:])], 1))
    torch.testing.assert_close(fr(x), ref)
