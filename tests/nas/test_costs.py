"""count_parameters / count_macs (gaea_nas.costs) against NAS-Bench-201's reported costs."""
import pytest
import torch
import torch.nn as nn

from gaea_nas.costs import count_macs, count_parameters
from gaea_nas.spaces.darts.genotypes import DARTS_V2
from gaea_nas.spaces.darts.networks import NetworkCIFAR
from gaea_nas.spaces.nb201 import NB201Network, NB201SuperNet

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NO_CONV = "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|skip_connect~1|none~2|"


# NAS-Bench-201 (C=16, N=5) cost ranges as its API reports them (get_cost_info):
# CIFAR-10 params 0.073306 .. 1.531546 M, FLOPs 7.78305 .. 220.11969 M; CIFAR-100 params
# 0.079156 .. 1.537396 M, FLOPs 7.7889 .. 220.12554 M; ImageNet16-120 min params 0.080456 M.
# The minimum is every cell without convs, the maximum the all-nor_conv_3x3 cell.
@pytest.mark.parametrize(
    "arch, classes, params, macs",
    [
        (ALL_CONV3, 10, 1_531_546, 220.11969),
        (NO_CONV, 10, 73_306, 7.78305),
        (ALL_CONV3, 100, 1_537_396, 220.12554),
        (NO_CONV, 100, 79_156, 7.7889),
    ],
)
def test_nb201_network_costs_match_benchmark(arch, classes, params, macs):
    net = NB201Network(arch, C=16, N=5, num_classes=classes)
    assert count_parameters(net) == params
    assert count_macs(net) == pytest.approx(macs, abs=5e-6)


def test_imagenet16_params_and_input_size():
    net = NB201Network(NO_CONV, C=16, N=5, num_classes=120)
    assert count_parameters(net) == 80_456
    # 16x16 input: every conv has a quarter of the output pixels; the linear layer stays
    lin = 64 * 120 + 120
    assert count_macs(net, (1, 3, 16, 16)) == pytest.approx((count_macs(net) * 1e6 - lin) / 4 / 1e6 + lin / 1e6)


def test_count_macs_batch_and_mode_and_bias():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, groups=1, bias=True), nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    m.train()
    expected = (9 * 3 * 4 * 25 + 4 * 25) + (9 * 4 * 4 / 2 * 25) + (100 * 7 + 7)
    assert count_macs(m, (1, 3, 5, 5)) == pytest.approx(expected / 1e6)
    assert count_macs(m, (3, 3, 5, 5)) == pytest.approx(expected / 1e6)  # per sample
    assert m.training
    with pytest.raises(ValueError, match="input_size"):
        count_macs(m, (0, 3, 5, 5))


def test_count_parameters_excludes_auxiliary_and_arch():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(10, 10)  # 110
            self.auxiliary_head = nn.Linear(10, 3)  # 33

    m = WithAux()
    assert count_parameters(m) == 110
    assert count_parameters(m, exclude_auxiliary=False) == 143
    sup = NB201SuperNet(C=4, N=1)
    assert count_parameters(sup) == sum(p.numel() for p in sup.weight_parameters())


def test_count_parameters_darts_published():
    net = NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    n = count_parameters(net)
    assert round(n / 1e6, 1) == 3.3  # published DARTS_V2, auxiliary head excluded
    assert count_parameters(net, exclude_auxiliary=False) > n
