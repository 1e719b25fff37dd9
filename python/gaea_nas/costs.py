"""Model costs: parameter counts and multiply-adds, counted the way NAS-Bench-201 reports them
(docs/method.md §4.3).

Multiply-adds: a Conv2d costs ``kh*kw*Cin*Cout/groups`` per output pixel (plus ``Cout`` per
output pixel if it has a bias), a Linear ``in*out`` (plus ``out`` with a bias) per row; BN,
ReLU, pooling and additions are not counted. Counted by forward hooks on one eval-mode
forward pass of a zero input of ``input_size``; reported in millions per sample.
"""
from typing import Sequence

import torch
import torch.nn as nn

from .spaces.arch_params import arch_parameters

__all__ = ["count_parameters", "count_macs"]


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of weight parameters (an int; divide by 1e6 for "M"). Architecture parameters
    (ArchParameters modules) never count; with ``exclude_auxiliary`` every parameter whose name
    contains ``auxiliary`` is left out too (DARTS's ``count_parameters_in_MB`` rule)."""
    arch = {id(p) for p in arch_parameters(model)}
    total = 0
    for name, p in model.named_parameters():
        if id(p) in arch or (exclude_auxiliary and "auxiliary" in name):
            continue
        total += p.numel()
    return total


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> float:
    """Multiply-adds of conv and linear layers for one sample, in millions (NAS-Bench-201's
    "FLOPs"), measured on a forward pass in eval mode (training mode is restored)."""
    input_size = tuple(int(s) for s in input_size)
    if len(input_size) < 2 or any(s < 1 for s in input_size):
        raise ValueError(f"count_macs: 'input_size' must be positive sizes with a batch dim, got {input_size}")
    batch = input_size[0]
    total = [0.0]

    def conv_hook(m: nn.Conv2d, inputs, output):
        kh, kw = m.kernel_size
        pixels = output.numel() // output.shape[1]  # batch * H_out * W_out
        total[0] += kh * kw * m.in_channels * m.out_channels / m.groups * pixels
        if m.bias is not None:
            total[0] += m.out_channels * pixels

    def linear_hook(m: nn.Linear, inputs, output):
        rows = output.numel() // m.out_features
        total[0] += rows * m.in_features * m.out_features
        if m.bias is not None:
            total[0] += rows * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0] / batch / 1e6
