"""torch.library.opcheck of each op, and torch.compile(fullgraph=True) of functions using them."""

import pytest
import torch

import gaea_ext
from gaea_ext import reference
from conftest import requires_kernels

# ---------------------------------------------------------------------------------------------
# opcheck (schema, fake kernel, autograd registration, AOT dispatch)


@requires_kernels
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_weighted_sum(device, layout, dtype):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xs = [torch.randn(2, 3, 4, 5, device=device, dtype=dtype).contiguous(memory_format=fmt)
          .requires_grad_() for _ in range(3)]
    w = torch.rand(3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gaea_ext.weighted_sum.default, (xs, w))
    torch.library.opcheck(torch.ops.gaea_ext.weighted_sum.default, ([x.detach() for x in xs], w.detach()))


@requires_kernels
@pytest.mark.parametrize("need", [[True, True, True], [True, False, True]])
def test_opcheck_weighted_sum_backward(device, need):
    xs = [torch.randn(7, 5, device=device) for _ in range(3)]
    w = torch.rand(3, device=device)
    g = torch.randn(7, 5, device=device)
    torch.library.opcheck(torch.ops.gaea_ext.weighted_sum_backward.default, (g, xs, w, need, True))
    gi, gw = torch.ops.gaea_ext.weighted_sum_backward(g, xs, w, need, True)
    assert len(gi) == sum(need)
    for k_out, k in enumerate(k for k in range(3) if need[k]):
        torch.testing.assert_close(gi[k_out], w[k] * g)
    torch.testing.assert_close(gw, torch.stack([(x * g).sum() for x in xs]), rtol=1e-5, atol=1e-5)


@requires_kernels
@pytest.mark.parametrize("adaptive", [False, True])
def test_opcheck_exp_grad_step(device, adaptive):
    ps = [torch.rand(3, 14, device=device) + 0.1, torch.rand(14, device=device) + 0.1]
    gs = [torch.randn_like(p) for p in ps]
    # Per-param options: alphas-like rows with the clamp and the regulariser, and edge-like
    # per-node segments without a clamp, in one call.
    args = (ps, gs, [0.1, 0.2], [2, 3, 4, 5], [0, 4], [1e-5, 0.0], [0.01, 0.0], False, adaptive)
    torch.library.opcheck(torch.ops.gaea_ext.exp_grad_step_.default, args)


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): few, small cases (CPU inductor compiles are slow on CI)


def mixed_op(x, w, weighted_sum=gaea_ext.weighted_sum):
    y = torch.relu(x)
    return weighted_sum([x, y, x * 2.0, y.sin()], w) * 3.0


def mixed_op_reference(x, w):
    return mixed_op(x, w, reference.weighted_sum)


def test_compile_weighted_sum_forward_backward(device):
    torch._dynamo.reset()
    compiled = torch.compile(mixed_op, fullgraph=True)
    x = torch.randn(2, 3, 5, 5, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(4, device=device, requires_grad=True)
    out = compiled(x, w)
    gx, gw = torch.autograd.grad(out.square().sum(), [x, w])

    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    want = mixed_op_reference(x2, w2)
    ex, ew = torch.autograd.grad(want.square().sum(), [x2, w2])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, ex, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, ew, rtol=1e-5, atol=1e-4)


def test_compile_weighted_sum_dynamic_shapes(device):
    torch._dynamo.reset()
    compiled = torch.compile(mixed_op, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9):
        x = torch.randn(n, 7, device=device, requires_grad=True)
        w = torch.rand(4, device=device, requires_grad=True)
        out = compiled(x, w)
        (gw,) = torch.autograd.grad(out.sum(), [w])
        (ew,) = torch.autograd.grad(mixed_op_reference(x, w).sum(), [w])
        torch.testing.assert_close(gw, ew, rtol=1e-5, atol=1e-4)


def test_compile_exp_grad_step(device):
    torch._dynamo.reset()

    def step(p, beta, g, gb):
        gaea_ext.exp_grad_step_(p, g, 0.1)
        gaea_ext.exp_grad_step_(beta, gb, 0.1, segments=[2, 3, 4, 5], min_value=0.0)
        return p.sum(-1), beta

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    p = torch.rand(14, 8, device=device) + 0.1
    p /= p.sum(-1, keepdim=True)
    beta = torch.rand(14, device=device) + 0.1
    g, gb = torch.randn(14, 8, device=device), torch.randn(14, device=device)
    p0 = p.clone()
    want_p = reference.exp_grad_step(p, g, 0.1)
    want_beta = reference.exp_grad_step(beta, gb, 0.1, segments=[2, 3, 4, 5], min_value=0.0)
    sums, _ = compiled(p, beta, g, gb)
    torch.testing.assert_close(p, want_p, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(beta, want_beta, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)
    assert not torch.allclose(p, p0)
