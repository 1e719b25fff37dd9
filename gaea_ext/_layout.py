"""The memory-layout rule shared by the kernels and their fake (meta) implementations."""
from typing import Sequence

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True when t's strides are a permutation of a contiguous layout (no gaps, no overlap)."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def share_dense_layout(tensors: Sequence[torch.Tensor]) -> bool:
    """Mirror of csrc/checks.cpp share_dense_layout: one dense layout shared by all tensors."""
    first = tensors[0]
    if not is_dense(first):
        return False
    return all(t.shape == first.shape and t.stride() == first.stride() for t in tensors)


def empty_in_layout(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An empty tensor laid out like the kernels' output for these operands."""
    first = tensors[0]
    if share_dense_layout(tensors):
        return torch.empty_like(first, memory_format=torch.preserve_format)
    return torch.empty_like(first, memory_format=torch.contiguous_format)
