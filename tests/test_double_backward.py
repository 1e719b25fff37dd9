"""Double backward (create_graph=True): every differentiable op's backward is itself
differentiable. The first-order backward runs the kernels; with create_graph=True the ops
differentiate their references, so second-order gradients (gradient penalties, DARTS'
second-order step) are exact. gradgradcheck in float64 for every op, the first-order gradients
of both paths agree, and a gradient penalty matches the reference's."""
import sys

import pytest
import torch
import torch.nn as nn

import gaea_ext
from gaea_ext import reference

F64 = dict(dtype=torch.float64)


def _leaf(*shape, device, positive=False):
    t = torch.rand(*shape, device=device, **F64) + 0.1 if positive else torch.randn(*shape, device=device, **F64)
    return t.requires_grad_()


# case -> (function of the leaves, the same function on the references, leaves)
def _weighted_sum(device):
    xs = [_leaf(2, 3, device=device) for _ in range(3)]
    w = _leaf(3, device=device, positive=True)
    return (lambda a, b, c, w: gaea_ext.weighted_sum([a, b, c], w),
            lambda a, b, c, w: reference.weighted_sum([a, b, c], w), xs + [w])


def _weighted_sum_repeated_input(device):
    x, y = _leaf(2, 3, device=device), _leaf(2, 3, device=device)
    w = _leaf(3, device=device, positive=True)
    return (lambda x, y, w: gaea_ext.weighted_sum([x, y, x], w),
            lambda x, y, w: reference.weighted_sum([x, y, x], w), [x, y, w])


MIXED_KINDS = ["none", "skip", "avg_pool_3x3", "max_pool_3x3", "tensor", "ones"]


def _mixed_op(device):
    x, y = _leaf(1, 2, 3, 4, device=device), _leaf(1, 2, 3, 4, device=device)
    w = _leaf(6, device=device, positive=True)
    return (lambda x, y, w: gaea_ext.mixed_op(x, [y], w, MIXED_KINDS),
            lambda x, y, w: reference.mixed_node([x], [y], w, MIXED_KINDS, [0, 0, 0, 0, 0, 0]), [x, y, w])


def _mixed_node_bn(device):
    """Two edges (the first x used by both), BN kinds with norms from pool_batch_norm."""
    x0, x1 = _leaf(1, 2, 2, 3, device=device), _leaf(1, 2, 2, 3, device=device)
    y = _leaf(1, 2, 2, 3, device=device)
    w = _leaf(2, 3, device=device, positive=True)
    kinds = [["avg_pool_3x3_bn", "tensor", "skip"], ["max_pool_3x3_bn", "avg_pool_3x3", "skip"]]

    def norms(pool_stats, x0, x1):
        out = []
        for x, kind in ((x0, "avg_pool_3x3"), (x1, "max_pool_3x3")):
            mean, var = pool_stats(x, kind)
            out.append(torch.stack([mean, torch.rsqrt(var + 1e-5)]))
        return out

    def fused(x0, x1, y, w):
        return gaea_ext.mixed_node([(x0, [y], kinds[0]), (x1, [], kinds[1])], w, norms(gaea_ext.pool_stats, x0, x1))

    def ref(x0, x1, y, w):
        n = norms(reference.pool_stats, x0, x1)
        return reference.mixed_node([x0, x1], [y], w.flatten(), kinds[0] + kinds[1], [0, 0, 0, 1, 1, 1],
                                    torch.stack(n))
    return fused, ref, [x0, x1, y, w]


def _mixed_op_weights_only(device):
    """Only the weights require grad (the outputs are saved for them); then only x (the
    outputs are not saved at all)."""
    x, y = torch.randn(1, 2, 3, 4, device=device, **F64), _leaf(1, 2, 3, 4, device=device)
    w = _leaf(3, device=device, positive=True)
    kinds = ["skip", "max_pool_3x3", "tensor"]
    return (lambda w: gaea_ext.mixed_op(x, [y.detach()], w, kinds),
            lambda w: reference.mixed_node([x], [y.detach()], w, kinds, [0, 0, 0]), [w])


def _mixed_op_x_only(device):
    x, y = _leaf(1, 2, 3, 4, device=device), torch.randn(1, 2, 3, 4, device=device, **F64)
    w = torch.rand(3, device=device, **F64) + 0.1
    kinds = ["skip", "avg_pool_3x3", "tensor"]
    return (lambda x: gaea_ext.mixed_op(x, [y], w, kinds),
            lambda x: reference.mixed_node([x], [y], w, kinds, [0, 0, 0]), [x])


def _pool_stats(kind):
    def case(device):
        x = _leaf(2, 2, 3, 3, device=device)
        return (lambda x: gaea_ext.pool_stats(x, kind), lambda x: reference.pool_stats(x, kind), [x])
    return case


def _pool_batch_norm(device):
    x = _leaf(2, 2, 3, 3, device=device)
    bn = nn.BatchNorm2d(2, affine=False, track_running_stats=False).to(device, torch.float64)

    def ref(x):
        mean, var = reference.pool_stats(x, "avg_pool_3x3")
        return torch.stack([mean, torch.rsqrt(var + bn.eps)])
    return (lambda x: gaea_ext.pool_batch_norm(x, "avg_pool_3x3", bn), ref, [x])


def _partial_channel_node(device):
    mixed = _leaf(1, 1, 2, 2, device=device)
    states = [_leaf(1, 4, 4, 4, device=device), _leaf(1, 4, 2, 2, device=device)]
    w = _leaf(2, device=device, positive=True)
    return (lambda m, s0, s1, w: gaea_ext.partial_channel_node(m, [s0, s1], w, [2, 1], 4),
            lambda m, s0, s1, w: reference.partial_channel_node(m, [s0, s1], w, [2, 1], 4), [mixed, *states, w])


def _partial_channel_node_states_only(device):
    mixed = torch.randn(2, 2, 3, 3, device=device, **F64)
    states = [_leaf(2, 4, 3, 3, device=device), _leaf(2, 4, 3, 3, device=device)]
    w = _leaf(2, device=device, positive=True)
    return (lambda s0, s1, w: gaea_ext.partial_channel_node(mixed, [s0, s1], w, [1, 1], 2),
            lambda s0, s1, w: reference.partial_channel_node(mixed, [s0, s1], w, [1, 1], 2), [*states, w])


CASES = {
    "weighted_sum": _weighted_sum,
    "weighted_sum_repeated_input": _weighted_sum_repeated_input,
    "mixed_op": _mixed_op,
    "mixed_node_bn": _mixed_node_bn,
    "mixed_op_weights_only": _mixed_op_weights_only,
    "mixed_op_x_only": _mixed_op_x_only,
    "pool_stats_avg": _pool_stats("avg_pool_3x3"),
    "pool_stats_max": _pool_stats("max_pool_3x3"),
    "pool_batch_norm": _pool_batch_norm,
    "partial_channel_node": _partial_channel_node,
    "partial_channel_node_states_only": _partial_channel_node_states_only,
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradgradcheck(device, case):
    """Second derivatives through the op (its backward differentiated, in every input and in
    the incoming gradient) match finite differences in float64."""
    fused, _, leaves = CASES[case](device)
    assert torch.autograd.gradgradcheck(fused, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_second_order_matches_reference(device, case):
    """Hessian-vector products through the op equal the reference's, and the first-order
    gradients with create_graph=True equal those of the kernels' plain backward."""
    fused, ref, leaves = CASES[case](device)
    out = fused(*leaves)
    v = torch.randn_like(out)
    plain = torch.autograd.grad(out, leaves, v, allow_unused=True)
    first = torch.autograd.grad(fused(*leaves), leaves, v, create_graph=True, allow_unused=True)
    first_ref = torch.autograd.grad(ref(*leaves), leaves, v, create_graph=True, allow_unused=True)
    for a, b, c in zip(plain, first, first_ref):
        a, b, c = (torch.zeros_like(leaves[0]) if t is None else t for t in (a, b, c))
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(b, c)
    u = [torch.randn_like(t) for t in leaves]
    dot = sum((g * d).sum() for g, d in zip(first, u) if g is not None and g.requires_grad)
    dot_ref = sum((g * d).sum() for g, d in zip(first_ref, u) if g is not None and g.requires_grad)
    if not torch.is_tensor(dot_ref) or not dot_ref.requires_grad:
        return  # linear in every leaf: nothing second-order to compare
    hvp = torch.autograd.grad(dot, leaves, allow_unused=True)
    hvp_ref = torch.autograd.grad(dot_ref, leaves, allow_unused=True)
    for a, b in zip(hvp, hvp_ref):
        if a is None or b is None:
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum())
        else:
            torch.testing.assert_close(a, b)


def test_gradient_penalty_through_mixed_op(device):
    """d/dw of a gradient penalty ||d loss / d x||^2 through a mixed op: the reference's value,
    not zero."""
    x = torch.linspace(-2, 3, 2 * 2 * 4 * 5, device=device, **F64).reshape(2, 2, 4, 5).requires_grad_()
    y = torch.linspace(1, -1, 2 * 2 * 4 * 5, device=device, **F64).reshape(2, 2, 4, 5)
    w = torch.tensor([0.3, 0.7], device=device, **F64, requires_grad=True)

    def penalty_grad(mixed):
        out = mixed(x, w)
        (gx,) = torch.autograd.grad((out * y).sum() + out.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), w)[0]

    got = penalty_grad(lambda x, w: gaea_ext.mixed_op(x, [], w, ["skip", "max_pool_3x3"]))
    want = penalty_grad(lambda x, w: reference.mixed_node([x], [], w, ["skip", "max_pool_3x3"], [0, 0]))
    assert want.abs().min() > 1
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_create_graph_in_low_precision_channels_last(device, dtype):
    """The differentiable backward keeps the op's dtypes and agrees with the kernels' backward
    on channels_last float32/bfloat16 inputs; the second-order gradient is finite."""
    fmt = torch.channels_last
    x = torch.randn(2, 4, 5, 6, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    y = torch.randn(2, 4, 5, 6, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    w = torch.rand(4, device=device, requires_grad=True)
    kinds = ["skip", "avg_pool_3x3", "max_pool_3x3", "tensor"]
    v = torch.randn(2, 4, 5, 6, device=device, dtype=dtype)
    plain = torch.autograd.grad(gaea_ext.mixed_op(x, [y], w, kinds), [x, y, w], v)
    first = torch.autograd.grad(gaea_ext.mixed_op(x, [y], w, kinds), [x, y, w], v, create_graph=True)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    for a, b, t in zip(plain, first, (x, y, w)):
        assert b.dtype == t.dtype and b.shape == t.shape
        torch.testing.assert_close(b.float(), a.float(), **tol)
    (second,) = torch.autograd.grad(sum(g.float().pow(2).sum() for g in first), [w])
    assert torch.isfinite(second).all() and second.abs().sum() > 0


@pytest.mark.parametrize("weights_grad", [True, False])
def test_weighted_sum_create_graph_with_unused_and_frozen_inputs(device, weights_grad):
    """create_graph=True with inputs that need no grad, frozen weights, and an input whose
    weight is zero: no "not used in the graph" error, and the reference's gradients."""
    x = _leaf(2, 3, device=device)
    frozen = torch.randn(2, 3, device=device, **F64)
    w = torch.tensor([0.5, 0.0, 2.0], device=device, **F64, requires_grad=weights_grad)
    leaves = [x, w] if weights_grad else [x]
    grads = torch.autograd.grad(gaea_ext.weighted_sum([x, frozen, x * x], w).pow(2).sum(), leaves,
                                create_graph=True)
    want = torch.autograd.grad(reference.weighted_sum([x, frozen, x * x], w).pow(2).sum(), leaves,
                               create_graph=True)
    for g, r in zip(grads, want):
        torch.testing.assert_close(g, r)
    second = torch.autograd.grad(sum(g.sum() for g in grads), leaves)
    second_ref = torch.autograd.grad(sum(g.sum() for g in want), leaves)
    for g, r in zip(second, second_ref):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("case", ["weighted_sum", "mixed_op", "partial_channel_node", "pool_stats_max"])
def test_first_order_backward_runs_the_kernels(device, case, monkeypatch):
    """Without create_graph the reference is never differentiated (the kernels serve the
    backward); with it, it is."""
    import gaea_ext._autograd as autograd_helpers

    calls = []
    real = autograd_helpers.reference_grads
    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(autograd_helpers, "reference_grads", counted)  # weighted_sum's
    for name in ("mixed_node", "partial_channel", "pool_stats"):
        monkeypatch.setattr(sys.modules[f"gaea_ext.{name}"], "reference_grads", counted)
    fused, _, leaves = CASES[case](device)
    out = fused(*leaves)
    torch.autograd.grad(out, leaves, torch.ones_like(out))
    if gaea_ext.backend(device) == "reference":
        return  # the ops run on the references: autograd differentiates them directly
    assert not calls
    torch.autograd.grad(fused(*leaves), leaves, torch.ones_like(out), create_graph=True)
    assert calls
