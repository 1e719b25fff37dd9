"""The memory-layout rules shared by the kernels (csrc/host_common.cpp) and their fake (meta)
implementations and autograd wrappers: every op's Python side takes its layouts from here."""
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


def batch_outermost(t: torch.Tensor) -> bool:
    """True when the first dimension (the batch) has the largest stride of a dense layout, so
    each sample is one stretch of the flat storage (contiguous and channels_last tensors)."""
    return t.dim() >= 1 and t.stride(0) * t.shape[0] == t.numel()


def batch_major_format(first: torch.Tensor) -> torch.memory_format:
    """Mirror of csrc/host_common.cpp batch_major_format: the layout the per-sample kernels give
    operands that share none, the first operand's when it is channels_last (memory_format_of),
    so operands already in it are not copied, else contiguous."""
    return memory_format_of(first)


def empty_in_batch_major_layout(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mirror of csrc/host_common.cpp with_batch_major_layout: an empty tensor laid out like
    the per-sample kernels' output (sample_weighted_sum): the operands' shared dense layout
    when the batch is outermost in it, else batch_major_format of the first operand."""
    first = tensors[0]
    if batch_outermost(first) and share_dense_layout(tensors):
        return torch.empty_like(first, memory_format=torch.preserve_format)
    return torch.empty_like(first, memory_format=batch_major_format(first))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """Mirror of csrc/host_common.cpp in_layout_of: the layout a kernel gives the result that
    belongs to `x` (e.g. its gradient): channels_last when `x` is channels_last and not also
    contiguous, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like `x` in the layout memory_format_of(x)."""
    return torch.empty_like(x, memory_format=memory_format_of(x))
