"""search_step: arch step touches only arch params, weight step only weights; GAEA
concentrates theta on the best op of a toy problem and its entropy falls."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gaea_ext
from gaea_nas import NB201SuperNet
from gaea_nas.search.step import NonFiniteLossError, arch_step, search_iteration, weight_step


class ToyMixed(nn.Module):
    """y = sum_k theta_k * op_k(scale * x) with ops (x, -x, 0.5 x); the target is x, so op 0
    is best. `scale` is the one weight."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.full((3,), 1 / 3))
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        h = self.scale * x
        return gaea_ext.weighted_sum([h, -h, 0.5 * h], self.theta)

    def arch_parameters(self):
        return [self.theta]

    def weight_parameters(self):
        return [self.scale]


def entropy(p):
    return float(-(p * p.clamp_min(1e-12).log()).sum())


def test_gaea_concentrates_theta_on_the_best_op():
    torch.manual_seed(0)
    model = ToyMixed()
    arch_opt = gaea_ext.optim.ExponentiatedGradient(model.arch_parameters(), lr=0.5)
    weight_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05)
    start_entropy = entropy(model.theta.detach())
    for _ in range(200):
        x = torch.randn(32, 4)
        batch = (x, x)
        search_iteration(model, batch, batch, arch_opt, weight_opt, loss_fn=F.mse_loss)
    theta = model.theta.detach()
    assert int(theta.argmax()) == 0
    assert theta[0] > 0.9
    assert entropy(theta) < 0.5 * start_entropy
    assert abs(float(theta.sum()) - 1) < 1e-5


def test_arch_step_leaves_weights_and_their_grads_alone():
    torch.manual_seed(0)
    net = NB201SuperNet(C=4, N=1, num_classes=3, arch="simplex")
    arch_opt = gaea_ext.optim.ExponentiatedGradient(net.arch_parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.weight_parameters()]
    theta_before = [p.detach().clone() for p in net.arch_parameters()]
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))
    arch_step(net, batch, arch_opt)
    assert all(p.grad is None for p in net.weight_parameters())  # no weight gradients computed
    assert all(torch.equal(a, b) for a, b in zip(before, net.weight_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(theta_before, net.arch_parameters()))


def test_weight_step_leaves_arch_params_alone_and_clips():
    torch.manual_seed(0)
    net = NB201SuperNet(C=4, N=1, num_classes=3, arch="simplex")
    weight_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    theta_before = [p.detach().clone() for p in net.arch_parameters()]
    batch = (100 * torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))
    weight_step(net, batch, weight_opt, grad_clip=1e-3)
    norm = torch.norm(torch.stack([p.grad.norm() for p in net.weight_parameters()]))
    assert float(norm) <= 1e-3 * (1 + 1e-4)
    assert all(p.grad is None for p in net.arch_parameters())
    assert all(torch.equal(a, b) for a, b in zip(theta_before, net.arch_parameters()))


def test_non_finite_loss_stops_before_any_update():
    model = ToyMixed()
    arch_opt = gaea_ext.optim.ExponentiatedGradient(model.arch_parameters(), lr=0.5)
    x = torch.full((4, 4), float("nan"))
    theta = model.theta.detach().clone()
    with pytest.raises(NonFiniteLossError, match="architecture loss"):
        arch_step(model, (x, torch.zeros(4, 4)), arch_opt, loss_fn=F.mse_loss)
    assert torch.equal(model.theta.detach(), theta)


def test_arch_grads_are_reduced_then_clipped_before_the_step():
    torch.manual_seed(0)
    net = NB201SuperNet(C=4, N=1, num_classes=3, arch="softmax")
    seen = []

    def reduce(params):  # stands in for the data-parallel all-reduce
        seen.append([p.grad.clone() for p in params])
        for p in params:
            p.grad.mul_(1000.0)

    opt = torch.optim.SGD(net.arch_parameters(), lr=1.0)
    before = [p.detach().clone() for p in net.arch_parameters()]
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 2]))
    arch_step(net, batch, opt, reduce_grads=reduce, grad_clip=0.5)
    assert len(seen) == 1 and len(seen[0]) == len(net.arch_parameters())
    step = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, net.arch_parameters())])
    assert abs(float(step.norm()) - 0.5) < 1e-4  # the 1000x grads were clipped to norm 0.5


def test_search_iteration_reports_both_accuracies_and_skips_arch_in_warmup():
    torch.manual_seed(0)
    net = NB201SuperNet(C=4, N=1, num_classes=3, arch="simplex")
    arch_opt = gaea_ext.optim.ExponentiatedGradient(net.arch_parameters(), lr=0.1)
    weight_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    batch = (torch.randn(4, 3, 8, 8), torch.tensor([0, 2, 1, 1]))
    out = search_iteration(net, batch, batch, arch_opt, weight_opt)
    assert set(out) == {"search_loss", "search_acc", "train_loss", "train_acc"}
    theta = net.arch_parameters()[0].detach().clone()
    out = search_iteration(net, batch, None, None, weight_opt, update_arch=False)
    assert set(out) == {"train_loss", "train_acc"}
    assert torch.equal(theta, net.arch_parameters()[0].detach())
    with pytest.raises(ValueError, match="update_arch"):
        search_iteration(net, batch, None, arch_opt, weight_opt)
