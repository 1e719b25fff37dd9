"""Double backward: the backward kernels are not differentiable, so a backward with
create_graph=True through any differentiable op raises RuntimeError naming the op (instead of
a silently wrong, zero second-order gradient); the first-order backward is unaffected."""
import pytest
import torch
import torch.nn as nn

import gaea_ext
from conftest import requires_kernels


def _weighted_sum(device):
    xs = [torch.randn(2, 3, device=device, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.rand(3, device=device, dtype=torch.float64, requires_grad=True)
    return gaea_ext.weighted_sum(xs, w), xs + [w]


def _mixed_node(device):
    x = torch.randn(2, 2, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 2, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, device=device, dtype=torch.float64, requires_grad=True)
    return gaea_ext.mixed_op(x, [y], w, ["skip", "avg_pool_3x3", "max_pool_3x3", "tensor"]), [x, y, w]


def _partial_channel_node(device):
    mixed = torch.randn(2, 1, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, 6, 6, device=device, dtype=torch.float64, requires_grad=True),
              torch.randn(2, 4, 3, 3, device=device, dtype=torch.float64, requires_grad=True)]
    w = torch.rand(2, device=device, dtype=torch.float64, requires_grad=True)
    return gaea_ext.partial_channel_node(mixed, states, w, [2, 1], 4), [mixed, w, *states]


def _pool_stats(device):
    x = torch.randn(2, 3, 4, 4, device=device, dtype=torch.float64, requires_grad=True)
    return gaea_ext.pool_stats(x, "max_pool_3x3"), [x]


def _pool_batch_norm(device):
    x = torch.randn(2, 3, 4, 4, device=device, dtype=torch.float64, requires_grad=True)
    bn = nn.BatchNorm2d(3, affine=False).to(device, torch.float64)
    return gaea_ext.pool_batch_norm(x, "avg_pool_3x3", bn), [x]


# op whose backward runs -> inputs and output of one call
CASES = {
    "weighted_sum": _weighted_sum,
    "mixed_node": _mixed_node,
    "partial_channel_node": _partial_channel_node,
    "pool_stats": _pool_stats,
    "pool_batch_norm": _pool_batch_norm,  # pool_stats' backward
}
OP_OF = {"pool_batch_norm": "pool_stats"}


@requires_kernels
@pytest.mark.parametrize("case", list(CASES))
def test_create_graph_raises_naming_the_op(device, case):
    out, leaves = CASES[case](device)
    op = OP_OF.get(case, case)
    with pytest.raises(RuntimeError, match=rf"^gaea_ext\.{op}: double backward \(create_graph=True\) is not supported$"):
        torch.autograd.grad(out, leaves, torch.ones_like(out), create_graph=True)


@requires_kernels
@pytest.mark.parametrize("case", list(CASES))
def test_first_order_backward_still_works(device, case):
    out, leaves = CASES[case](device)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
