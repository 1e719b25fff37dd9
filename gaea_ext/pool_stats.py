"""gaea_ext.pool_stats / gaea_ext.pool_batch_norm: the per-channel batch statistics of a 3x3
stride-1 pool, without materialising the pool, for the BatchNorm (no affine) that follows
the DARTS supernet's pools.

`pool_stats(x, kind)` is `[2, C]`: mean and biased variance over N, H, W of `kind`'s pool of
`x`, differentiable in `x` (the backward recomputes the pool). `pool_batch_norm(x, kind, bn)`
turns them into the `[mean, 1/std]` norm that `mixed_terms` takes for a BN kind, exactly as
`bn(pool(x))` would normalise in train or eval mode, and updates `bn`'s running statistics.
`mixed_op` / `mixed_node` / `mixed_terms` call it themselves when their `norms` hold the
BatchNorm modules.

Errors (every backend): TypeError for an argument of the wrong type or dtype, ValueError for a
wrong shape, kind or BatchNorm configuration, raised before any kernel runs.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives are exact; the first-order backward runs the kernel.

Kernels: csrc/cpu/pool_stats_cpu.cpp, csrc/cuda/pool_stats_cuda.cu (ops `gaea_ext::pool_stats`,
`gaea_ext::pool_stats_backward`). Reference: gaea_ext.reference.pool_stats.
Tests: tests/test_pool_batch_norm.py.
"""
import torch

from . import reference
from ._autograd import double_backward_enabled, reference_grads
from ._backend import HAS_EXTENSION, use_reference
from ._checks import check_pool_stats
from ._layout import empty_like_layout

POOL_KINDS = ("avg_pool_3x3", "max_pool_3x3") + reference.BN_KINDS
_CODE = {k: reference.MIXED_KINDS.index(k) for k in POOL_KINDS}


def pool_stats(x: torch.Tensor, kind: str) -> torch.Tensor:
    """`[2, C]`: per-channel mean and biased variance over N, H, W of the stride-1 3x3 pool
    `kind` (avg without padded cells, or max; a BN kind means its pool) of the 4-D `x`;
    float32 (float64 for float64 `x`), differentiable in `x`."""
    check_pool_stats(x, kind, POOL_KINDS)
    if use_reference(x.device):
        return reference.pool_stats(x, kind)
    return torch.ops.gaea_ext.pool_stats(x, _CODE[kind])


def pool_batch_norm(x: torch.Tensor, kind: str, bn: torch.nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The `[2, C]` norm (mean, 1/sqrt(var + eps)) with which `bn` (a BatchNorm2d without
    affine) normalises `pool(x)`: batch statistics in training mode (updating `bn`'s running
    mean, unbiased running variance and batch count as BatchNorm2d does), the running
    statistics in eval mode. Pass it to :func:`gaea_ext.mixed_terms` for the BN kind, or pass
    `bn` itself there and the op calls this on the term's input."""
    check_pool_stats(x, kind, POOL_KINDS)
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"pool_batch_norm: 'bn' must be a BatchNorm module, got {type(bn).__name__}")
    if bn.affine:
        raise ValueError("pool_batch_norm: 'bn' must have affine=False (the DARTS supernet's pool BatchNorm)")
    if x.shape[1] != bn.num_features:
        raise ValueError(f"pool_batch_norm: 'x' must be [N, {bn.num_features}, H, W] for this bn, got {tuple(x.shape)}")
    use_batch_stats = bn.training or bn.running_mean is None
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not use_batch_stats:
        mean, var = bn.running_mean.to(acc), bn.running_var.to(acc)
        return torch.stack([mean, torch.rsqrt(var + bn.eps)])
    stats = pool_stats(x, kind)
    mean, var = stats[0], stats[1]
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            count = x.numel() // x.shape[1]
            unbiased = var.detach() * (count / max(count - 1, 1))
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    return torch.stack([mean, torch.rsqrt(var + bn.eps)])


if HAS_EXTENSION:

    @torch.library.register_fake("gaea_ext::pool_stats")
    def _pool_stats_fake(x, kind):
        return x.new_empty((2, x.shape[1]), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)

    @torch.library.register_fake("gaea_ext::pool_stats_backward")
    def _pool_stats_backward_fake(grad_stats, x, stats, kind):
        return empty_like_layout(x)

    def _setup_context(ctx, inputs, output):
        x, kind = inputs
        ctx.kind = kind
        ctx.save_for_backward(x, output)

    def _backward(ctx, grad_stats):
        x, stats = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        if double_backward_enabled():
            kind = reference.MIXED_KINDS[ctx.kind]
            (gx,) = reference_grads(lambda x: reference.pool_stats(x, kind), (x,), (True,), grad_stats)
            return gx, None
        return torch.ops.gaea_ext.pool_stats_backward(grad_stats.contiguous(), x, stats, ctx.kind), None

    torch.library.register_autograd("gaea_ext::pool_stats", _backward, setup_context=_setup_context)
