"""gaea_nas.spaces.depthwise_conv.depthwise_conv2d: the same function and gradients as
F.conv2d with groups = channels over `copies` copies of the input (float64 gradcheck and
gradgradcheck; odd sizes, strides, dilations, copies, channels_last and non-contiguous inputs,
bf16 autocast), the copies never saved, and the channel-multiplier form used off the CPU."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.modules.utils import _pair

from gaea_nas.spaces import depthwise_conv
from gaea_nas.spaces.depthwise_conv import depthwise_conv2d

# (N, C, H, W, kh, kw, stride, padding, dilation, copies): the DARTS sep/dil convs and odd cases
CASES = [
    (2, 3, 7, 7, 3, 3, 1, 1, 1, 1),  # sep_conv_3x3 (PyTorch's gradients)
    (2, 3, 8, 6, 5, 5, 1, 2, 1, 1),  # sep_conv_5x5, non-square
    (1, 2, 9, 9, 3, 3, 1, 2, 2, 1),  # dil_conv_3x3
    (2, 2, 11, 10, 5, 5, 1, 4, 2, 1),  # dil_conv_5x5
    (2, 3, 9, 7, 3, 5, 2, 1, 1, 1),  # stride 2, odd size
    (2, 2, 7, 7, 5, 5, 1, 2, 1, 3),  # three edges' sep_conv_5x5 first stage
    (1, 2, 10, 9, 5, 3, 2, 2, 2, 2),  # copies, stride 2, dilation 2, rectangular kernel
    (2, 3, 6, 6, 3, 3, 1, 1, 1, 4),  # copies with PyTorch's gradients (3x3)
    (3, 1, 5, 5, 3, 1, 1, (1, 0), 1, 1),  # rectangular kernel, per-dimension padding
    (2, 2, 9, 8, 3, 3, 1, 0, 3, 2),  # no padding, dilation 3
]


def _inputs(N, C, H, W, kh, kw, copies=1, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    w = torch.randn(copies * C, 1, kh, kw, generator=g, dtype=dtype)
    return x, w


def _reference(x, w, s, p, d, copies):
    return F.conv2d(x.repeat(1, copies, 1, 1), w, None, s, p, d, copies * x.shape[1])


def _assert_matches_conv2d(x, w, s, p, d, copies=1, tol=1e-12, conv=depthwise_conv2d):
    """``conv`` and F.conv2d over the input copies agree on x, w: output and both gradients."""
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    y1, y2 = conv(x1, w1, s, p, d, copies), _reference(x2, w2, s, p, d, copies)
    torch.testing.assert_close(y1, y2, rtol=tol, atol=tol)
    gy = torch.randn_like(y2)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES)
def test_same_function_and_gradients_as_conv2d(case):
    N, C, H, W, kh, kw, s, p, d, copies = case
    x, w = _inputs(N, C, H, W, kh, kw, copies)
    _assert_matches_conv2d(x, w, s, p, d, copies)


@pytest.mark.parametrize("case", CASES)
def test_channel_multiplier_form_off_the_cpu(case):
    """The form used on other devices (one conv with `copies` outputs per channel, output
    reordered), checked here on CPU tensors."""
    N, C, H, W, kh, kw, s, p, d, copies = case
    x, w = _inputs(N, C, H, W, kh, kw, copies)
    def conv(a, b, s, p, d, copies):
        return depthwise_conv._channel_multiplier_conv(a, b, _pair(s), _pair(p), _pair(d), copies)

    _assert_matches_conv2d(x, w, s, p, d, copies, conv=conv)


@pytest.mark.parametrize("case", CASES[:3] + CASES[5:8])
def test_gradcheck_and_gradgradcheck(case):
    N, C, H, W, kh, kw, s, p, d, copies = case
    x, w = _inputs(min(N, 2), C, min(H, 7), min(W, 7), kh, kw, copies)
    x.requires_grad_()
    w.requires_grad_()
    f = lambda a, b: depthwise_conv2d(a, b, s, p, d, copies)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


def test_only_the_needed_gradient():
    x, w = _inputs(2, 3, 6, 6, 5, 5, copies=2)
    w.requires_grad_()
    depthwise_conv2d(x, w, 1, 2, 1, 2).sum().backward()
    torch.testing.assert_close(w.grad, torch.autograd.grad(_reference(x, w, 1, 2, 1, 2).sum(), w)[0])
    x.requires_grad_()
    w2 = w.detach()
    (gx,) = torch.autograd.grad(depthwise_conv2d(x, w2, 1, 2, 1, 2).sum(), x)
    torch.testing.assert_close(gx, torch.autograd.grad(_reference(x, w2, 1, 2, 1, 2).sum(), x)[0])


def test_the_copies_are_not_saved():
    saved = []
    x, w = _inputs(2, 3, 8, 8, 5, 5, copies=4, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        depthwise_conv2d(x, w, 1, 2, 1, 4)
    assert saved and max(t.numel() for t in saved) == x.numel()


def test_channels_last_and_non_contiguous_inputs():
    x, w = _inputs(2, 4, 9, 9, 5, 5, copies=2)
    _assert_matches_conv2d(x.contiguous(memory_format=torch.channels_last), w, 1, 2, 1, 2)
    _assert_matches_conv2d(torch.randn(2, 8, 9, 9, dtype=x.dtype)[:, ::2], w, 1, 2, 1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_and_autocast(dtype):
    x, w = _inputs(2, 3, 8, 8, 5, 5, copies=2, dtype=torch.float32)
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    a, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    b, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ya = depthwise_conv2d(a, wa, 1, 2, 1, 2)
        yb = _reference(b, wb, 1, 2, 1, 2)
    assert ya.dtype == yb.dtype
    torch.testing.assert_close(ya, yb, **tol)
    gy = torch.randn_like(yb)
    ya.backward(gy)
    yb.backward(gy)
    assert a.grad.dtype == b.grad.dtype == torch.float32 and wa.grad.dtype == torch.float32
    torch.testing.assert_close(a.grad, b.grad, **tol)
    torch.testing.assert_close(wa.grad, wb.grad, rtol=5e-2, atol=2e-1 if dtype == torch.bfloat16 else 1e-4)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(5, 11), W=st.integers(5, 11),
       k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2), d=st.integers(1, 2), p=st.integers(0, 4),
       copies=st.integers(1, 3))
def test_property_matches_conv2d(N, C, H, W, k, s, d, p, copies):
    if H + 2 * p < d * (k - 1) + 1 or W + 2 * p < d * (k - 1) + 1:
        return
    x, w = _inputs(N, C, H, W, k, k, copies)
    _assert_matches_conv2d(x, w, s, p, d, copies, tol=1e-11)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(6, 1, 3, 3))
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), copies=2)
    with pytest.raises(ValueError, match="'copies'"):
        depthwise_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 1, 3, 3), copies=0)
