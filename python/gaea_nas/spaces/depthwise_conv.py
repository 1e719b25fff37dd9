"""Depthwise convolution with a faster CPU backward, for the DARTS supernet's separable and
dilated convs.

On the CPU, oneDNN's backward of a depthwise convolution (``groups == in_channels``) is several
times slower than its forward for 5x5 and dilated kernels, mostly in the weight gradient (for
the supernet's sizes, e.g. ``[4, 16, 16, 16]``, 5x5: 0.53 ms for the weight gradient against
0.06 ms for the forward, 1 thread). :func:`depthwise_conv2d` computes the same convolution with
``F.conv2d`` and its gradients with convolutions that run near forward speed:

- the weight gradient as a depthwise convolution of the padded input by the output gradient,
  with the batch folded into the channels (``groups = N * C``; the original stride becomes the
  dilation and the original dilation the stride), summed over the batch;
- the input gradient, at stride 1, as a depthwise convolution of the output gradient by the
  flipped kernel (``torch.nn.grad.conv2d_input`` otherwise).

3x3 undilated kernels, whose oneDNN backward is fast, are left to ``F.conv2d``.

Both are exact reformulations (only the summation order differs) and are themselves
differentiable, so double backward works. On other devices, where cuDNN's depthwise kernels
are fast, it is ``F.conv2d``. Under autocast the inputs are cast as ``F.conv2d`` would cast them.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d"]


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups=C)`` for ``x`` ``[N, C, H, W]``
    and ``weight`` ``[C, 1, kh, kw]`` (zero padding, no bias), with the faster backward on the CPU."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[:2] != (x.shape[1], 1):
        raise ValueError(f"depthwise_conv2d: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not make a "
                         "depthwise convolution (weight [C, 1, kh, kw] for x [N, C, H, W])")
    if x.device.type != "cpu" or (weight.shape[-2:] == (3, 3) and _pair(dilation) == (1, 1)):
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv.apply(x.to(dtype), weight.to(dtype), _pair(stride), _pair(padding), _pair(dilation))
    return _DepthwiseConv.apply(x, weight, _pair(stride), _pair(padding), _pair(dilation))


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(x, weight, grad_out, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, weight, grad_out, stride, padding, dilation)
        return grad_x, grad_w, None, None, None


def _input_grad(x, weight, grad_out, stride, padding, dilation):
    """dL/dx: at stride 1 a depthwise conv of grad_out by the flipped kernel, else PyTorch's
    input gradient."""
    kh, kw = weight.shape[-2:]
    back_pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if stride != (1, 1) or min(back_pad) < 0:
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
