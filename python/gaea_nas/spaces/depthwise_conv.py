"""Depthwise convolution with a faster CPU backward, for the DARTS supernet's separable and
dilated convs, optionally over several copies of its input (the same-input convs of several
edges as one call).

On the CPU, oneDNN's backward of a depthwise convolution (``groups == in_channels``) is several
times slower than its forward for 5x5 and dilated kernels, mostly in the weight gradient (for
the supernet's sizes, e.g. ``[4, 16, 16, 16]``, 5x5: 0.53 ms for the weight gradient against
0.06 ms for the forward, 1 thread), and a depthwise convolution with several output channels
per input channel runs slower than a plain one over as many input copies.
:func:`depthwise_conv2d` computes the convolution with ``F.conv2d`` over the copies (made in the
forward and the backward, never saved) and its gradients with convolutions that run near
forward speed:

- the weight gradient as a depthwise convolution of the padded input by the output gradient,
  with the batch folded into the channels (``groups = N * C``; the original stride becomes the
  dilation and the original dilation the stride), summed over the batch;
- the input gradient, at stride 1, as a depthwise convolution of the output gradient by the
  flipped kernel (``torch.nn.grad.conv2d_input`` otherwise), summed over the copies.

For 3x3 undilated kernels, whose oneDNN backward is fast, the gradients are PyTorch's own.
Both reformulations are exact (only the summation order differs) and differentiable, so double
backward works. On other devices, where cuDNN's depthwise kernels are fast, it is one
``F.conv2d`` with ``copies`` output channels per input channel. Under autocast the inputs are
cast as ``F.conv2d`` would cast them.
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

__all__ = ["depthwise_conv2d"]


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1,
                     copies: int = 1) -> torch.Tensor:
    """``F.conv2d(x.repeat(1, copies, 1, 1), weight, None, stride, padding, dilation,
    groups=copies * C)`` for ``x`` ``[N, C, H, W]`` and ``weight`` ``[copies * C, 1, kh, kw]``
    (zero padding, no bias): output channel ``e * C + c`` is copy ``e`` of channel ``c``
    convolved by ``weight[e * C + c]``. The copies are never saved for the backward; on the CPU
    the backward is the faster one of the module docstring."""
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"depthwise_conv2d: 'copies' must be a positive int, got {copies!r}")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[:2] != (copies * x.shape[1], 1):
        raise ValueError(f"depthwise_conv2d: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not make a "
                         f"depthwise convolution over {copies} copies (weight [copies * C, 1, kh, kw] for x "
                         "[N, C, H, W])")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if x.device.type != "cpu":
        return _channel_multiplier_conv(x, weight, stride, padding, dilation, copies)
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv.apply(x.to(dtype), weight.to(dtype), stride, padding, dilation, copies)
    return _DepthwiseConv.apply(x, weight, stride, padding, dilation, copies)


def _channel_multiplier_conv(x, weight, stride, padding, dilation, copies):
    """The same convolution as one depthwise conv with ``copies`` outputs per input channel
    (no input copies), its output reordered to copy-major channels."""
    C = x.shape[1]
    if copies == 1:
        return F.conv2d(x, weight, None, stride, padding, dilation, C)
    kh, kw = weight.shape[-2:]
    w = weight.reshape(copies, C, 1, kh, kw).transpose(0, 1).reshape(C * copies, 1, kh, kw)
    y = F.conv2d(x, w, None, stride, padding, dilation, C)  # channel c * copies + e
    n, _, ho, wo = y.shape
    return y.reshape(n, C, copies, ho, wo).transpose(1, 2).reshape(n, copies * C, ho, wo)


def _repeat(x: torch.Tensor, copies: int) -> torch.Tensor:
    return x.repeat(1, copies, 1, 1) if copies > 1 else x


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, copies):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, copies)
        return F.conv2d(_repeat(x, copies), weight, None, stride, padding, dilation, copies * x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, copies = ctx.conv
        xr = _repeat(x, copies)
        pytorch_grads = weight.shape[-2:] == (3, 3) and dilation == (1, 1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(xr, weight, grad_out, stride, padding, dilation, pytorch_grads)
            if copies > 1:
                N, _, H, W = grad_x.shape
                grad_x = grad_x.reshape(N, copies, -1, H, W).sum(1)
        if ctx.needs_input_grad[1]:
            if pytorch_grads:
                grad_w = torch.nn.grad.conv2d_weight(xr, weight.shape, grad_out, stride, padding, dilation,
                                                     xr.shape[1])
            else:
                grad_w = _weight_grad(xr, weight, grad_out, stride, padding, dilation)
        return grad_x, grad_w, None, None, None, None


def _input_grad(x, weight, grad_out, stride, padding, dilation, pytorch_grads):
    """dL/dx: at stride 1 a depthwise conv of grad_out by the flipped kernel, else (or when
    asked) PyTorch's input gradient."""
    kh, kw = weight.shape[-2:]
    back_pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if pytorch_grads or stride != (1, 1) or min(back_pad) < 0:
        return torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride, padding, dilation, x.shape[1])
    return F.conv2d(grad_out, weight.flip(-2, -1), None, 1, back_pad, dilation, x.shape[1])


def _weight_grad(x, weight, grad_out, stride, padding, dilation):
    """dL/dweight: the padded input convolved by the output gradient, one group per
    (sample, channel), summed over the batch."""
    N, C, H, W = x.shape
    kh, kw = weight.shape[-2:]
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).reshape(1, N * C, H + 2 * padding[0],
                                                                             W + 2 * padding[1])
    kernels = grad_out.reshape(N * C, 1, *grad_out.shape[-2:])
    g = F.conv2d(padded, kernels, None, dilation, 0, stride, N * C)  # [1, N * C, >= kh, >= kw]
    return g[..., :kh, :kw].reshape(N, C, kh, kw).sum(0).unsqueeze(1)
