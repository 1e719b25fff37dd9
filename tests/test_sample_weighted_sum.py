"""sample_weighted_sum: forward/backward against the float64 reference for every dtype, odd
sizes and layouts, float64 gradcheck and gradgradcheck, opcheck, torch.compile, bad input,
determinism; drop_path_sum against DARTS' drop path."""

import pytest
import torch

import gaea_ext
from gaea_ext import reference
from conftest import acc_eps, assert_same_across_threads, assert_within, eps, requires_kernels
from test_weighted_sum import make_input

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# N x inner: one sample, odd sizes, samples of more than one CPU chunk / CUDA block (2048).
SHAPES = [(1,), (7,), (3, 5, 7, 9), (2, 4099), (5, 1, 3, 3)]
LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "expanded"]


def ground_truth(inputs, weights, grad_out, wrt):
    """Float64 forward and grads (w.r.t. the tensors in `wrt`) of reference.sample_weighted_sum."""
    up = {id(t): t.detach().to(torch.float64).requires_grad_() for t in list(inputs) + [weights]}
    out = reference.sample_weighted_sum([up[id(t)] for t in inputs], up[id(weights)])
    grads = torch.autograd.grad(out, [up[id(t)] for t in wrt], grad_out.to(torch.float64)) if wrt else ()
    return out.detach(), grads


def check_against_reference(inputs, weights):
    """Run gaea_ext.sample_weighted_sum; compare the forward and every gradient with float64
    truth, within the rounding bounds of the dtype and the accumulation type."""
    dtype, wdtype = inputs[0].dtype, weights.dtype
    K = len(inputs)
    out = gaea_ext.sample_weighted_sum(inputs, weights)
    assert out.dtype == dtype and out.shape == inputs[0].shape and out.device == inputs[0].device
    wrt = []
    for t in inputs + [weights]:
        if t.requires_grad and all(t is not u for u in wrt):
            wrt.append(t)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(device=out.device, dtype=dtype)
    want, want_grads = ground_truth(inputs, weights, grad_out, wrt)

    shape = (-1,) + (1,) * (inputs[0].dim() - 1)
    x64 = [t.detach().to(torch.float64) for t in inputs]
    w64 = weights.detach().to(torch.float64)
    S = sum(w64[k].reshape(shape).abs() * x64[k].abs() for k in range(K))
    tiny = torch.finfo(dtype).tiny
    assert_within(out, want, (eps(dtype) + K * acc_eps(dtype)) * S + tiny, "forward")
    if not wrt:
        assert not out.requires_grad
        return out
    got_grads = torch.autograd.grad(out, wrt, grad_out)
    g64 = grad_out.to(torch.float64)
    inner = max(out[0].numel(), 1) if out.shape[0] else 1
    for t, got, want_g in zip(wrt, got_grads, want_grads):
        assert got.dtype == t.dtype and got.shape == t.shape
        if t is weights:
            S_w = torch.stack([(x * g64).abs().reshape(x.shape[0], -1).sum(1) for x in x64])
            rel = 2 * eps(dtype) + eps(wdtype) + inner * acc_eps(dtype)
            assert_within(got, want_g, rel * S_w + torch.finfo(wdtype).tiny, "grad_weights")
        else:
            occ = [k for k in range(K) if inputs[k] is t]
            Sw = sum(w64[k].reshape(shape).abs() for k in occ)
            assert_within(got, want_g, (len(occ) + 1) * eps(dtype) * Sw * g64.abs() + tiny, f"grad_inputs{occ}")
    return out


def make_case(shape, dtype, layout, device, K, seed, wdtype=torch.float32, inputs_grad=True, weights_grad=True):
    gen = torch.Generator().manual_seed(seed)
    inputs = [make_input(shape, dtype, layout, device, gen, inputs_grad)[1] for _ in range(K)]
    weights = torch.randn(K, shape[0], generator=gen, dtype=torch.float64).to(device=device, dtype=wdtype)
    return inputs, weights.requires_grad_(weights_grad)


# ---------------------------------------------------------------------------------------------
# against the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, shape):
    inputs, weights = make_case(shape, dtype, "contiguous", device, K=3, seed=len(shape))
    out = check_against_reference(inputs, weights)
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(device, dtype, layout):
    """A shared dense layout with the batch outermost is kept (channels_last, last two dims
    transposed); non-dense views are read right and give a contiguous output."""
    inputs, weights = make_case((3, 5, 7, 9), dtype, layout, device, K=2, seed=1)
    out = check_against_reference(inputs, weights)
    if layout in ("channels_last", "transposed"):
        assert out.stride() == inputs[0].stride()
    else:
        assert out.is_contiguous()
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_batch_not_outermost_and_mixed_layouts(device):
    """A dense layout with the batch inside (a transposed batch) and inputs of different
    layouts: computed on contiguous copies, contiguous output."""
    gen = torch.Generator().manual_seed(2)
    base = [torch.randn(6, 5, generator=gen).to(device).requires_grad_() for _ in range(2)]
    inputs = [t.t() for t in base]  # [5, 6], batch stride 1
    weights = torch.rand(2, 5, generator=gen).to(device).requires_grad_()
    out = check_against_reference(inputs, weights)
    assert out.is_contiguous() or gaea_ext.backend(device) == "reference"
    layouts = ["contiguous", "channels_last", "sliced", "expanded"]
    inputs = [make_input((2, 3, 5, 7), torch.float32, lay, device, gen, True)[1] for lay in layouts]
    check_against_reference(inputs, torch.randn(4, 2, generator=gen).to(device).requires_grad_())


@pytest.mark.parametrize("weights_grad", [True, False])
def test_channels_last_inputs_and_a_channel_sliced_gradient(device, weights_grad):
    """A DARTS cell under channels_last: the node's gradient is a channel slice of the cell's
    concatenated output, not dense in that layout. The kernels then work in the first input's
    layout (only the gradient is copied), so the input gradients come back channels_last,
    equal to the reference; the fake kernel gives the same layout (opcheck)."""
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(3, 5, 6, 7, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
          .requires_grad_() for _ in range(2)]
    w = torch.rand(2, 3, generator=gen).to(device).requires_grad_(weights_grad)
    out = gaea_ext.sample_weighted_sum(xs, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    cat_grad = torch.randn(3, 15, 6, 7, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    grad = cat_grad[:, 5:10]  # the node's block of the cell output's gradient
    assert not grad.is_contiguous() and not grad.is_contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(out, xs + ([w] if weights_grad else []), grad)
    _, want = ground_truth(xs, w, grad, xs + ([w] if weights_grad else []))
    for k in range(2):
        assert got[k].is_contiguous(memory_format=torch.channels_last) or gaea_ext.backend(device) == "reference"
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-5, atol=1e-6)
    if weights_grad:
        torch.testing.assert_close(got[2].double(), want[2], rtol=1e-5, atol=1e-5)
    # Mixed layouts, the first channels_last: the output keeps it.
    mixed = gaea_ext.sample_weighted_sum([xs[0], xs[1].contiguous()], w)
    assert mixed.is_contiguous(memory_format=torch.channels_last) or gaea_ext.backend(device) == "reference"
    if gaea_ext.backend(device) != "reference":
        torch.library.opcheck(torch.ops.gaea_ext.sample_weighted_sum_backward.default,
                              (grad, [x.detach() for x in xs], w.detach(), [True, True], weights_grad))
        torch.library.opcheck(torch.ops.gaea_ext.sample_weighted_sum.default,
                              ([xs[0].detach(), xs[1].detach().contiguous()], w.detach()))


@pytest.mark.parametrize("wdtype", [torch.float16, torch.float64])
def test_weights_of_another_dtype(device, wdtype):
    """Weights of any floating dtype; their gradient comes back in it."""
    inputs, weights = make_case((4, 3, 5), torch.bfloat16, "contiguous", device, K=2, seed=3, wdtype=wdtype)
    check_against_reference(inputs, weights)


@pytest.mark.parametrize("K", [65, 130])
def test_many_inputs(device, K):
    """More inputs than one CUDA launch takes (csrc/kernels/sample_weighted_sum.cuh)."""
    inputs, weights = make_case((3, 5), torch.float16, "contiguous", device, K=K, seed=K)
    check_against_reference(inputs, weights)


@pytest.mark.parametrize("need", ["inputs", "weights", "some", "none"])
def test_gradient_patterns(device, need):
    inputs, weights = make_case((3, 4, 5), torch.float32, "contiguous", device, K=3, seed=4,
                                inputs_grad=need in ("inputs", "some"), weights_grad=need in ("weights", "some"))
    if need == "some":
        inputs[1] = inputs[1].detach()
    check_against_reference(inputs, weights)


def test_same_tensor_twice_and_empty(device):
    x, y = (torch.randn(3, 4, device=device, requires_grad=True) for _ in range(2))
    w = torch.rand(3, 3, device=device, requires_grad=True)
    check_against_reference([x, y, x], w)
    out = gaea_ext.sample_weighted_sum([torch.randn(0, 3, device=device)] * 2, torch.rand(2, 0, device=device))
    assert out.shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# float64 gradcheck and gradgradcheck, opcheck, torch.compile


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_gradcheck_and_gradgradcheck(device, layout):
    gen = torch.Generator().manual_seed(5)
    leaves = [make_input((3, 2, 3, 3), torch.float64, layout, device, gen, True)[0] for _ in range(2)]
    w = torch.randn(2, 3, dtype=torch.float64, generator=gen).to(device).requires_grad_()

    def fn(a, b, w):
        views = [t.transpose(-1, -2) if layout == "transposed" else t for t in (a, b)]
        return gaea_ext.sample_weighted_sum([views[0], views[1], views[0]], torch.cat([w, w[:1]]))

    assert torch.autograd.gradcheck(fn, (*leaves, w))
    assert torch.autograd.gradgradcheck(fn, (*leaves, w))


@requires_kernels
def test_opcheck(device):
    xs = [torch.randn(3, 4, 5, 3, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
          for _ in range(2)]
    w = torch.rand(2, 3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gaea_ext.sample_weighted_sum.default, (xs, w))
    torch.library.opcheck(torch.ops.gaea_ext.sample_weighted_sum.default, (xs, w.detach()))
    g = torch.randn_like(xs[0])
    torch.library.opcheck(torch.ops.gaea_ext.sample_weighted_sum_backward.default,
                          (g, [x.detach() for x in xs], w.detach(), [True, False], True))


def node(a, b, w, fused=gaea_ext.sample_weighted_sum):
    return fused([a.relu(), b * 2.0], w).sin()


def test_compile_forward_backward(device):
    torch._dynamo.reset()
    compiled = torch.compile(node, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (3, 5):
        a = torch.randn(n, 4, 5, 5, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
        b = torch.randn(n, 4, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.rand(2, n, device=device, requires_grad=True)
        out = compiled(a, b, w)
        got = torch.autograd.grad(out.square().sum(), [a, w])
        want_out = node(a, b, w, reference.sample_weighted_sum)
        want = torch.autograd.grad(want_out.square().sum(), [a, w])
        torch.testing.assert_close(out, want_out)
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: the exception type and a message naming the argument


def xs(device, k=2, shape=(4, 5), dtype=torch.float32):
    return [torch.randn(shape, device=device, dtype=dtype) for _ in range(k)]


BAD = {
    "empty inputs": (ValueError, "'inputs'", lambda d: ([], torch.rand(0, 4, device=d))),
    "inputs a tensor": (TypeError, "'inputs'", lambda d: (torch.randn(2, 4, 5, device=d), torch.rand(2, 4, device=d))),
    "shape mismatch": (ValueError, "'inputs'", lambda d: (xs(d, 1) + [torch.randn(4, 6, device=d)],
                                                          torch.rand(2, 4, device=d))),
    "dtype mismatch": (TypeError, "'inputs'", lambda d: (xs(d, 1) + xs(d, 1, dtype=torch.float64),
                                                         torch.rand(2, 4, device=d))),
    "integer inputs": (TypeError, "'inputs'", lambda d: ([torch.ones(4, 5, dtype=torch.int32, device=d)] * 2,
                                                         torch.rand(2, 4, device=d))),
    "0-d inputs": (ValueError, "batch dimension", lambda d: ([torch.tensor(1.0, device=d)] * 2,
                                                             torch.rand(2, 1, device=d))),
    "1-D weights": (ValueError, r"'weights' must be \[K, N\] = \[2, 4\]", lambda d: (xs(d), torch.rand(2, device=d))),
    "[N, K] weights": (ValueError, r"'weights' must be \[K, N\]", lambda d: (xs(d), torch.rand(4, 2, device=d))),
    "a weight row short": (ValueError, r"'weights' must be \[K, N\]", lambda d: (xs(d, 3), torch.rand(2, 4, device=d))),
    "integer weights": (TypeError, "'weights'", lambda d: (xs(d), torch.ones(2, 4, dtype=torch.int64, device=d))),
    "weights a list": (TypeError, "'weights'", lambda d: (xs(d), [[0.5] * 4] * 2)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(device, case):
    error, match, make = BAD[case]
    inputs, weights = make(device)
    with pytest.raises(error, match="^sample_weighted_sum: .*" + match):
        gaea_ext.sample_weighted_sum(inputs, weights)


def test_bad_device():
    with pytest.raises(ValueError, match="^sample_weighted_sum: 'weights' must be on the inputs' device"):
        gaea_ext.sample_weighted_sum(xs("cpu"), torch.rand(2, 4, device="meta"))


@requires_kernels
def test_kernel_checks_name_the_argument():
    """The op called directly (no Python checks) still names the argument."""
    with pytest.raises(RuntimeError, match="sample_weighted_sum: 'weights' must be \\[K, N\\]"):
        torch.ops.gaea_ext.sample_weighted_sum(xs("cpu"), torch.rand(4, 2))
    with pytest.raises(RuntimeError, match="sample_weighted_sum_backward: 'grad_out' must match"):
        torch.ops.gaea_ext.sample_weighted_sum_backward(torch.rand(3), xs("cpu"), torch.rand(2, 4), [True, True], True)


# ---------------------------------------------------------------------------------------------
# determinism


def _forward_and_weight_grad(inputs, w, g):
    w = w.detach().requires_grad_()
    out = gaea_ext.sample_weighted_sum(inputs, w)
    (gw,) = torch.autograd.grad(out, [w], g)
    return out.detach(), gw


def test_bitwise_deterministic(device):
    inputs = [torch.randn(3, 70001, device=device) for _ in range(2)]
    w = torch.rand(2, 3, device=device)
    g = torch.randn(3, 70001, device=device)
    first = _forward_and_weight_grad(inputs, w, g)
    for a, b in zip(first, _forward_and_weight_grad(inputs, w, g)):
        assert torch.equal(a, b)
    torch.testing.assert_close(first[1][1].double(), (inputs[1].double() * g.double()).sum(1), rtol=1e-4, atol=1e-3)


@requires_kernels
def test_thread_count_does_not_change_bits():
    inputs = [torch.randn(3, 70001) for _ in range(2)]
    w, g = torch.rand(2, 3), torch.randn(3, 70001)
    assert_same_across_threads(lambda: _forward_and_weight_grad(inputs, w, g))


# ---------------------------------------------------------------------------------------------
# drop_path_sum


def darts_drop_path(x, drop_prob):
    """The DARTS code's drop_path (in place on a copy): x.div_(keep).mul_(mask)."""
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x.clone().div_(keep).mul_(mask)


@pytest.mark.parametrize("drop", [None, [True, False]])
def test_drop_path_sum_equals_darts_drop_path(device, drop):
    """Same seed, same masks: drop_path_sum([a, b]) == drop_path(a) + drop_path(b) in float64,
    forward and gradients (an input outside `drop` is added as it is)."""
    a, b = (torch.randn(16, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True) for _ in range(2))
    torch.manual_seed(7)
    got = gaea_ext.drop_path_sum([a, b], 0.3, drop=drop)
    torch.manual_seed(7)
    want = darts_drop_path(a, 0.3) + (darts_drop_path(b, 0.3) if drop is None else b)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    assert not torch.allclose(got, a + b)  # some samples were dropped
    g = torch.randn_like(got)
    for x, y in zip(torch.autograd.grad(got, [a, b], g), torch.autograd.grad(want, [a, b], g)):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-14)


def test_drop_path_sum_generator_eval_and_zero(device):
    a, b = torch.randn(32, 5, device=device), torch.randn(32, 5, device=device)
    gen = torch.Generator(device=device)
    outs = [gaea_ext.drop_path_sum([a, b], 0.5, generator=gen.manual_seed(3)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], a + b)
    assert torch.equal(gaea_ext.drop_path_sum([a, b], 0.5, training=False), a + b)
    assert torch.equal(gaea_ext.drop_path_sum([a, b], 0.0), a + b)
    assert torch.equal(gaea_ext.drop_path_sum([a, b], 0.5, drop=[False, False]), a + b)
    half = gaea_ext.drop_path_sum([a.bfloat16(), b], 0.5, generator=gen.manual_seed(3))
    assert half.dtype == torch.float32  # promoted as a + b would be


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_drop_path_sum_tensor_prob_equals_float(device, dtype):
    """A 0-d float64 drop_prob (what a compiled network passes) draws the same masks and gives
    bitwise the same sum as the float; at 0 it still draws (and keeps every sample)."""
    a, b = torch.randn(16, 3, 5, device=device, dtype=dtype), torch.randn(16, 3, 5, device=device, dtype=dtype)
    p = torch.tensor(0.3, dtype=torch.float64, device=device)
    torch.manual_seed(11)
    want, after_float = gaea_ext.drop_path_sum([a, b], 0.3), torch.rand(1, device=device)
    torch.manual_seed(11)
    got, after_tensor = gaea_ext.drop_path_sum([a, b], p), torch.rand(1, device=device)
    if device.type == "cpu":  # CUDA draws a tensor probability with another kernel
        assert torch.equal(got, want) and torch.equal(after_float, after_tensor)
    assert not torch.equal(got, a + b)
    zero = gaea_ext.drop_path_sum([a, b], torch.zeros((), dtype=torch.float64, device=device))
    torch.testing.assert_close(zero, a + b, rtol=0, atol=0)


@requires_kernels
def test_drop_path_sum_saves_no_input(device):
    """The masks need no gradient: the backward keeps only the [K, N] weights alive."""
    a, b = (torch.randn(8, 3, 5, device=device, requires_grad=True) for _ in range(2))
    out = gaea_ext.drop_path_sum([a * 1.0, b * 1.0], 0.2)
    saved = [t for t in _saved_tensors(out.grad_fn)]
    assert saved and all(t.shape == (2, 8) for t in saved)


def _saved_tensors(grad_fn):
    return [getattr(grad_fn, name) for name in dir(grad_fn)
            if name.startswith("_saved_") and isinstance(getattr(grad_fn, name), torch.Tensor)] + \
        [t for t in getattr(grad_fn, "saved_tensors", ()) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("case,error,match", [
    ("p=1", ValueError, "'drop_prob' must be in \\[0, 1\\)"),
    ("p=-0.1", ValueError, "'drop_prob' must be in \\[0, 1\\)"),
    ("p 1-d tensor", TypeError, "'drop_prob' must be a number or a 0-d floating tensor"),
    ("p int tensor", TypeError, "'drop_prob' must be a number or a 0-d floating tensor"),
    ("p string", TypeError, "'drop_prob' must be a number or a 0-d floating tensor"),
    ("p device", ValueError, "'drop_prob' must be on the inputs' device cpu"),
    ("drop length", ValueError, "'drop' must have one flag per input"),
    ("drop ints", TypeError, "'drop\\[0\\]' must be a bool"),
    ("shape", ValueError, "'inputs' must share one shape"),
])
def test_drop_path_sum_bad_input(case, error, match):
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    args = {"p=1": ([a, b], 1.0, None), "p=-0.1": ([a, b], -0.1, None),
            "p 1-d tensor": ([a, b], torch.tensor([0.2]), None), "p int tensor": ([a, b], torch.tensor(0), None),
            "p string": ([a, b], "0.2", None), "p device": ([a, b], torch.tensor(0.2, device="meta"), None),
            "drop length": ([a, b], 0.2, [True]), "drop ints": ([a, b], 0.2, [1, 0]),
            "shape": ([a, torch.randn(4, 2)], 0.2, None)}[case]
    with pytest.raises(error, match="^drop_path_sum: " + match):
        gaea_ext.drop_path_sum(args[0], args[1], drop=args[2])
