"""weighted_sum: forward/backward against the float64 reference, layouts, gradcheck, determinism."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gaea_ext
from gaea_ext import reference
from conftest import acc_eps, assert_same_across_threads, assert_within, cuda_limit, eps, requires_kernels

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Sizes chosen to straddle vector widths (4, 8, 16, 32 lanes) without being multiples of them.
DIMS = [1, 2, 3, 5, 7, 9, 13, 17, 31, 33, 67]
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "expanded"]


# ---------------------------------------------------------------------------------------------
# construction helpers


def make_input(shape, dtype, layout, device, gen, requires_grad=False):
    """A tensor of `shape` in the given memory layout; returns (leaf, view passed to the op)."""
    shape = tuple(shape)
    nd = len(shape)
    if layout == "channels_last" and nd != 4:
        layout = "contiguous"
    if layout == "transposed" and nd < 2:
        layout = "sliced"
    if layout in ("sliced", "expanded") and nd < 1:
        layout = "contiguous"

    if layout == "transposed":
        base_shape = shape[:-2] + (shape[-1], shape[-2])
    elif layout == "sliced":
        base_shape = shape[:-1] + (2 * shape[-1] + 1,)
    elif layout == "expanded":
        base_shape = shape[:-1] + (1,)
    else:
        base_shape = shape
    leaf = torch.randn(base_shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == "channels_last":
        leaf = leaf.contiguous(memory_format=torch.channels_last)
    leaf.requires_grad_(requires_grad)

    if layout == "transposed":
        view = leaf.transpose(-1, -2)
    elif layout == "sliced":
        view = leaf[..., 1::2]
    elif layout == "expanded":
        view = leaf.expand(shape)
    else:
        view = leaf
    assert view.shape == shape
    return leaf, view


def ground_truth(inputs, weights, grad_out, wrt):
    """Float64 forward and grads (w.r.t. the tensors in `wrt`) from reference.weighted_sum."""
    cache = {}

    def up(t):
        if id(t) not in cache:
            cache[id(t)] = t.detach().to(torch.float64).requires_grad_(True)
        return cache[id(t)]

    xs = [up(t) for t in inputs]
    w = up(weights)
    out = reference.weighted_sum(xs, w)
    if not wrt:
        return out.detach(), ()
    grads = torch.autograd.grad(out, [cache[id(t)] for t in wrt], grad_out.to(torch.float64))
    return out.detach(), grads


def check_against_reference(inputs, weights, grad_out=None):
    """Run gaea_ext.weighted_sum, compare forward and every available grad to float64 truth."""
    dtype, wdtype = inputs[0].dtype, weights.dtype
    K = len(inputs)
    out = gaea_ext.weighted_sum(inputs, weights)
    assert out.dtype == dtype
    assert out.shape == inputs[0].shape
    assert out.device == inputs[0].device
    for t in inputs:
        assert out.data_ptr() != t.data_ptr() or out.numel() == 0, "output aliases an input"

    wrt = []
    for t in inputs + [weights]:
        if t.requires_grad and all(t is not u for u in wrt):
            wrt.append(t)
    if grad_out is None:
        grad_out = torch.randn(out.shape, dtype=torch.float64).to(device=out.device, dtype=dtype)
    want, want_grads = ground_truth(inputs, weights, grad_out, wrt)

    x64 = [t.detach().to(torch.float64) for t in inputs]
    w64 = weights.detach().to(torch.float64)
    S = sum(w64[k].abs() * x64[k].abs() for k in range(K))
    tiny = torch.finfo(dtype).tiny
    assert_within(out, want, (eps(dtype) + K * acc_eps(dtype)) * S + tiny, "forward")

    if not wrt:
        assert not out.requires_grad
        return out
    got_grads = torch.autograd.grad(out, wrt, grad_out)
    g64 = grad_out.detach().to(torch.float64)
    N = max(out.numel(), 1)
    for t, got, want_g in zip(wrt, got_grads, want_grads):
        assert got.dtype == t.dtype and got.shape == t.shape
        if t is weights:
            S_w = torch.stack([(x * g64).abs().sum() for x in x64])
            rel = 2 * eps(dtype) + eps(wdtype) + N * acc_eps(dtype)
            assert_within(got, want_g, rel * S_w + torch.finfo(wdtype).tiny, "grad_weights")
        else:
            occ = [k for k in range(K) if inputs[k] is t]
            Sw = sum(w64[k].abs() for k in occ)
            bound = (len(occ) + 1) * eps(dtype) * Sw * g64.abs() + tiny
            # grad w.r.t. a view: compare to the float64 grad of that same view
            assert_within(got, want_g, bound, f"grad_inputs[{occ}]")
    return out


# ---------------------------------------------------------------------------------------------
# hypothesis: random shapes, K, dtypes, layouts, requires_grad patterns


@st.composite
def cases(draw):
    K = draw(st.integers(1, 64))
    ndim = draw(st.integers(0, 4))
    shape = [draw(st.sampled_from(DIMS)) for _ in range(ndim)]
    while shape and K * torch.Size(shape).numel() > 20000:
        shape[draw(st.integers(0, len(shape) - 1))] = 1
    dtype = draw(st.sampled_from(DTYPES))
    wdtype = draw(st.sampled_from([torch.float32, dtype]))
    mode = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "sliced", "mixed"]))
    if mode == "mixed":
        layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(K)]
    else:
        layouts = [mode] * K
    rg = [draw(st.booleans()) for _ in range(K)]
    w_rg = draw(st.booleans())
    duplicate = K >= 2 and draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return K, shape, dtype, wdtype, layouts, rg, w_rg, duplicate, seed


@given(cases())
def test_matches_reference(device, case):
    K, shape, dtype, wdtype, layouts, rg, w_rg, duplicate, seed = case
    gen = torch.Generator().manual_seed(seed)
    inputs = [make_input(shape, dtype, layouts[k], device, gen, rg[k])[1] for k in range(K)]
    if duplicate:
        inputs[-1] = inputs[0]  # skip_connect: the same tensor passed twice
    weights = torch.randn(K, generator=gen, dtype=torch.float64).to(device=device, dtype=wdtype)
    weights.requires_grad_(w_rg)
    out = check_against_reference(inputs, weights)

    same_strides = all(t.stride() == inputs[0].stride() for t in inputs)
    if same_strides and len(set(layouts)) == 1 and layouts[0] == "channels_last" and len(shape) == 4:
        assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
    if all(t.is_contiguous() for t in inputs):
        assert out.is_contiguous(), out.stride()


# ---------------------------------------------------------------------------------------------
# explicit cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1), (7,), (4093,), (3, 2051)])
def test_small_and_odd_shapes(device, dtype, shape):
    gen = torch.Generator().manual_seed(1)
    inputs = [make_input(shape, dtype, "contiguous", device, gen, True)[1] for _ in range(5)]
    weights = torch.rand(5, generator=gen).to(device).requires_grad_()
    check_against_reference(inputs, weights)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channels_last_output(device, dtype):
    gen = torch.Generator().manual_seed(2)
    inputs = [make_input((3, 5, 7, 9), dtype, "channels_last", device, gen, True)[1] for _ in range(4)]
    weights = torch.rand(4, generator=gen).to(device).requires_grad_()
    out = check_against_reference(inputs, weights)
    assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
    assert out.stride() == inputs[0].stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixed_layouts(device, dtype):
    """Some inputs contiguous, some channels_last, some strided views: still correct."""
    gen = torch.Generator().manual_seed(3)
    layouts = ["contiguous", "channels_last", "transposed", "sliced", "channels_last", "expanded"]
    inputs = [make_input((2, 3, 5, 7), dtype, lay, device, gen, True)[1] for lay in layouts]
    weights = torch.randn(len(inputs), generator=gen).to(device).requires_grad_()
    check_against_reference(inputs, weights)


def test_dense_permuted_strides_are_kept(device):
    """All inputs share the same dense, non-standard strides: the output keeps them."""
    gen = torch.Generator().manual_seed(4)
    inputs = [make_input((5, 3, 7), torch.float32, "transposed", device, gen, True)[1] for _ in range(3)]
    weights = torch.rand(3, generator=gen).to(device).requires_grad_()
    out = check_against_reference(inputs, weights)
    assert out.stride() == inputs[0].stride()


@requires_kernels
@pytest.mark.parametrize("size", ["one", "launch_minus_one", "one_launch", "launch_plus_one", "two_launches_and_more"])
def test_many_inputs(device, size):
    """K around the inputs one CUDA launch takes (larger K takes several launches)."""
    per_launch = cuda_limit("weighted_sum_inputs_per_launch")
    K = {"one": 1, "launch_minus_one": per_launch - 1, "one_launch": per_launch, "launch_plus_one": per_launch + 1,
         "two_launches_and_more": 2 * per_launch + 2}[size]
    gen = torch.Generator().manual_seed(K)
    inputs = [make_input((37,), torch.float32, "contiguous", device, gen, True)[1] for _ in range(K)]
    weights = torch.randn(K, generator=gen).to(device).requires_grad_()
    check_against_reference(inputs, weights)


def test_skip_connect_same_tensor_twice(device):
    x = torch.randn(4, 8, 5, 5, device=device, requires_grad=True)
    y = x.relu()
    w = torch.tensor([0.2, 0.3, 0.5], device=device, requires_grad=True)
    out = gaea_ext.weighted_sum([x, y, x], w)
    gx, gw = torch.autograd.grad(out.sum(), [x, w])
    xd = x.detach().double()
    torch.testing.assert_close(out.double(), 0.7 * xd + 0.3 * xd.relu(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx.double(), 0.7 + 0.3 * (xd > 0).double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw.double(), torch.stack([xd.sum(), xd.relu().sum(), xd.sum()]),
                               rtol=1e-5, atol=1e-4)


def test_only_some_inputs_require_grad(device):
    a = torch.randn(33, device=device, requires_grad=True)
    b = torch.randn(33, device=device)
    c = torch.randn(33, device=device, requires_grad=True)
    w = torch.tensor([0.5, -2.0, 3.0], device=device)  # weights need no grad
    out = gaea_ext.weighted_sum([a, b, c], w)
    assert out.requires_grad
    g = torch.randn(33, device=device)
    ga, gc = torch.autograd.grad(out, [a, c], g)
    torch.testing.assert_close(ga, 0.5 * g)
    torch.testing.assert_close(gc, 3.0 * g)
    assert b.grad is None and w.grad is None


def test_only_weights_require_grad(device):
    xs = [torch.randn(3, 17, device=device) for _ in range(4)]
    w = torch.rand(4, device=device, requires_grad=True)
    out = gaea_ext.weighted_sum(xs, w)
    g = torch.randn(3, 17, device=device)
    (gw,) = torch.autograd.grad(out, [w], g)
    want = torch.stack([(x.double() * g.double()).sum() for x in xs])
    torch.testing.assert_close(gw.double(), want, rtol=1e-5, atol=1e-5)


def test_no_grad_anywhere(device):
    xs = [torch.randn(9, device=device) for _ in range(3)]
    out = gaea_ext.weighted_sum(xs, torch.rand(3, device=device))
    assert not out.requires_grad


# ---------------------------------------------------------------------------------------------
# the weight forms DARTS code passes: a [1, K] row, a list of 0-d tensors


def test_weights_as_a_row(device):
    """F.softmax of a one-row alpha ([1, K]) is taken as the K weights, gradients included."""
    xs = [torch.randn(2, 3, 4, device=device) for _ in range(4)]
    alpha = torch.randn(1, 4, device=device, requires_grad=True)
    out = gaea_ext.weighted_sum(xs, torch.softmax(alpha, dim=-1))
    want = reference.weighted_sum(xs, torch.softmax(alpha, dim=-1).reshape(-1))
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    got_grad, = torch.autograd.grad(out, alpha, g)
    want_grad, = torch.autograd.grad(want, alpha, g)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("container", [list, tuple])
def test_weights_as_a_list_of_scalars(device, container):
    """`zip(weights, ops)`-style 0-d (and 1-element) tensors are stacked; each gets its gradient."""
    xs = [torch.randn(5, 6, device=device, requires_grad=True) for _ in range(3)]
    ws = [torch.tensor(0.2, device=device, requires_grad=True), torch.tensor([0.3], device=device, requires_grad=True),
          torch.tensor(0.5, device=device, requires_grad=True)]
    out = gaea_ext.weighted_sum(xs, container(ws))
    want = sum(w.reshape(()) * x for w, x in zip(ws, xs))
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, ws + xs, g)
    expected = torch.autograd.grad(want, ws + xs, g)
    for a, b, leaf in zip(got, expected, ws + xs):
        assert a.shape == leaf.shape
        torch.testing.assert_close(a, b)


def test_weights_as_rows_of_a_softmax(device):
    """DARTS' MixedOp: `sum(w * op(x) for w, op in zip(weights, ops))` with weights a softmax row."""
    xs = [torch.randn(2, 3, 4, 4, device=device) for _ in range(3)]
    alpha = torch.randn(2, 3, device=device, requires_grad=True)
    weights = torch.softmax(alpha, dim=-1)
    out = gaea_ext.weighted_sum(xs, list(weights[1]))
    want = sum(w * x for w, x in zip(weights[1], xs))
    torch.testing.assert_close(out, want)
    got, = torch.autograd.grad(out.square().sum(), alpha, retain_graph=True)
    expected, = torch.autograd.grad(want.square().sum(), alpha)
    torch.testing.assert_close(got, expected)


def test_gradcheck_weight_list(device):
    xs = [torch.randn(3, 4, dtype=torch.float64, device=device) for _ in range(3)]
    ws = [torch.rand((), dtype=torch.float64, device=device, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: gaea_ext.weighted_sum(xs, [a, b, c]), tuple(ws))


def test_accepts_tuple_and_empty_tensors(device):
    xs = tuple(torch.randn(0, 3, device=device) for _ in range(3))
    out = gaea_ext.weighted_sum(xs, torch.rand(3, device=device))
    assert out.shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_gradcheck(device, layout):
    gen = torch.Generator().manual_seed(5)
    leaves = [make_input((2, 3, 3, 5), torch.float64, layout, device, gen, True)[0] for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(a, b, c, w):
        views = [t.transpose(-1, -2) if layout == "transposed" else t for t in (a, b, c)]
        return gaea_ext.weighted_sum(views, w)

    assert torch.autograd.gradcheck(fn, (*leaves, w))


def test_gradcheck_partial_and_duplicate(device):
    x = torch.randn(4, 7, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randn(4, 7, dtype=torch.float64, device=device)
    w = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: gaea_ext.weighted_sum([x, y, x], w), (x, w))
    assert torch.autograd.gradcheck(lambda w: gaea_ext.weighted_sum([x.detach(), y, y], w), (w,))
    assert torch.autograd.gradcheck(lambda x: gaea_ext.weighted_sum([x, y, x], w.detach()), (x,))


# ---------------------------------------------------------------------------------------------
# bitwise determinism


def _fwd_and_weight_grad(xs, w, g):
    w = w.detach().requires_grad_()
    out = gaea_ext.weighted_sum(xs, w)
    (gw,) = torch.autograd.grad(out, [w], g)
    return out.detach(), gw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bitwise_deterministic(device, dtype):
    N = 2**20 + 3
    xs = [torch.randn(N, device=device).to(dtype) for _ in range(4)]
    w = torch.rand(4, device=device)
    g = torch.randn(N, device=device).to(dtype)
    out0, gw0 = _fwd_and_weight_grad(xs, w, g)
    for _ in range(3):
        out, gw = _fwd_and_weight_grad(xs, w, g)
        assert torch.equal(out, out0)
        assert torch.equal(gw, gw0), (gw - gw0)
    # sanity: the result is the right one, so equality above is meaningful
    want = (xs[0].double() * g.double()).sum()
    torch.testing.assert_close(gw0[0].double(), want, rtol=1e-3, atol=1e-2)


@requires_kernels
def test_thread_count_does_not_change_bits():
    """CPU reductions use fixed chunks: 1 and 2 threads give bitwise identical results."""
    N = 2**20 + 3
    xs = [torch.randn(N) for _ in range(3)]
    w = torch.rand(3)
    g = torch.randn(N)
    assert_same_across_threads(lambda: _fwd_and_weight_grad(xs, w, g))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA tests need a GPU")
def test_cuda_side_stream_and_no_sync():
    """Runs on the current stream; forward and backward do no host synchronisation."""
    xs = [torch.randn(1000, 17, device="cuda", requires_grad=True) for _ in range(5)]
    w = torch.rand(5, device="cuda", requires_grad=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = gaea_ext.weighted_sum(xs, w)
            grads = torch.autograd.grad(out, xs + [w], torch.ones_like(out))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    torch.testing.assert_close(out, sum(w[k] * xs[k] for k in range(5)))
    torch.testing.assert_close(grads[-1], torch.stack([x.sum() for x in xs]), rtol=1e-5, atol=1e-3)
