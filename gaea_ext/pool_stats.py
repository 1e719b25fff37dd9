"""gaea_ext.pool_stats / gaea_ext.pool_batch_norm / gaea_ext.tensor_batch_norm: the
per-channel batch statistics of a 3x3 stride-1 pool, without materialising the pool, for the
BatchNorm (no affine) that follows the DARTS supernet's pools, and of a conv output for the
BatchNorm that follows it (the "tensor_bn" kind).

`pool_stats(x, kind)` is `[2, C]`: mean and biased variance over N, H, W of `kind`'s pool of
`x`, differentiable in `x` (the backward recomputes the pool); the kind "tensor_bn" takes the
statistics of `x` itself, in one pass, reading `x` in place (contiguous, channels_last or a
channel slice). `pool_batch_norm(x, kind, bn)` turns them into the `[mean, 1/std]` norm that
`mixed_terms` takes for a BN kind, exactly as `bn(pool(x))` would normalise in train or eval
mode, and updates `bn`'s running statistics. `mixed_op` / `mixed_node` / `mixed_terms` call it
themselves when their `norms` hold the BatchNorm modules.

`tensor_batch_norm(x, bns)` is the norm of a batched conv output `x` [N, C, H, W] whose
consecutive channel blocks belong to the BatchNorm2d(affine=False) modules `bns` (one module,
or several whose num_features sum to C, in channel order): `[2, C]` of mean and 1/std, exactly
as the modules would normalise their blocks (training mode: batch statistics, biased
variance, running statistics updated with the unbiased variance, momentum or a cumulative
average when momentum is None, num_batches_tracked; eval mode: the running statistics). One
pass over `x` for all modules; differentiable in `x`. An edge's norm is the column slice
`norm[:, off:off + C_e]` (a view), to pass to `mixed_terms` for its "tensor_bn" term next
to the edge's slice `x[:, off:off + C_e]` (read in place).

Errors (every backend): TypeError for an argument of the wrong type or dtype, ValueError for a
wrong shape, kind or BatchNorm configuration (modules of `bns` in different modes, features
not summing to C), raised before any kernel runs and before any running statistic changes.

Double backward: a backward with create_graph=True differentiates the reference instead of
running the backward kernel (gaea_ext._autograd.reference_grads), so second and higher
derivatives are exact; the first-order backward runs the kernel.

Kernels: csrc/cpu/pool_stats_cpu.cpp, csrc/cuda/pool_stats_cuda.cu (ops `gaea_ext::pool_stats`,
`gaea_ext::pool_stats_backward`). Reference: gaea_ext.reference.pool_stats.
Tests: tests/test_pool_batch_norm.py.
"""
from typing import List, Optional, Sequence, Union

import torch

from . import reference
from ._autograd import double_backward_enabled, reference_grads
from ._backend import HAS_OPS, use_reference
from ._checks import check_pool_stats, check_tensor_batch_norm
from ._layout import empty_like_layout

BatchNorm = torch.nn.modules.batchnorm._BatchNorm

POOL_KINDS = ("avg_pool_3x3", "max_pool_3x3") + reference.BN_KINDS
_CODE = {k: reference.MIXED_KINDS.index(k) for k in POOL_KINDS}


def pool_stats(x: torch.Tensor, kind: str) -> torch.Tensor:
    """`[2, C]`: per-channel mean and biased variance over N, H, W of the stride-1 3x3 pool
    `kind` (avg without padded cells, or max; a BN kind means its pool, "tensor_bn" the
    identity) of the 4-D `x`; float32 (float64 for float64 `x`), differentiable in `x`."""
    check_pool_stats(x, kind, POOL_KINDS)
    if use_reference(x.device):
        return reference.pool_stats(x, kind)
    return torch.ops.gaea_ext.pool_stats(x, _CODE[kind])


def pool_batch_norm(x: torch.Tensor, kind: str, bn: torch.nn.modules.batchnorm._BatchNorm,
                    stats: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The `[2, C]` norm (mean, 1/sqrt(var + eps)) with which `bn` (a BatchNorm2d without
    affine) normalises `pool(x)`: batch statistics in training mode (updating `bn`'s running
    mean, unbiased running variance and batch count as BatchNorm2d does), the running
    statistics in eval mode. Pass it to :func:`gaea_ext.mixed_terms` for the BN kind, or pass
    `bn` itself there and the op calls this on the term's input. `stats`: the
    `pool_stats(x, kind)` already computed for another BatchNorm of the same pool (the DARTS
    edges leaving one node), used in training mode instead of a second pass over `x`."""
    check_pool_stats(x, kind, POOL_KINDS)
    if stats is not None:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        if not isinstance(stats, torch.Tensor) or stats.shape != (2, x.shape[1]) or stats.dtype != acc:
            raise ValueError(f"pool_batch_norm: 'stats' must be the [2, {x.shape[1]}] {acc} pool_stats(x, kind), got "
                             f"{tuple(stats.shape) if isinstance(stats, torch.Tensor) else type(stats).__name__}")
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"pool_batch_norm: 'bn' must be a BatchNorm module, got {type(bn).__name__}")
    if bn.affine:
        raise ValueError("pool_batch_norm: 'bn' must have affine=False (the DARTS supernet's pool BatchNorm)")
    if x.shape[1] != bn.num_features:
        raise ValueError(f"pool_batch_norm: 'x' must be [N, {bn.num_features}, H, W] for this bn, got {tuple(x.shape)}")
    return _batch_norm(x, kind, [bn], stats)


def tensor_batch_norm(x: torch.Tensor, bns: Union[BatchNorm, Sequence[BatchNorm]]) -> torch.Tensor:
    """The `[2, C]` norm (mean, 1/sqrt(var + eps) per channel) with which the
    BatchNorm2d(affine=False) modules `bns` (one, or several whose num_features sum to C,
    each taking the next block of channels) normalise the 4-D `x`, e.g. a batched conv output
    whose channel blocks are the outputs of several edges: batch statistics of one pass over
    `x` in training mode (each module's running statistics updated exactly as BatchNorm2d
    does), the running statistics in eval mode (all modules in one mode). float32 (float64
    for float64 `x`), differentiable in `x`; slice it per module as `norm[:, off:off + C_m]`."""
    bns = check_tensor_batch_norm(x, bns)
    return _batch_norm(x, "tensor_bn", bns)


def _batch_norm(x: torch.Tensor, kind: str, bns: List[BatchNorm], stats: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The norm of `kind`'s pool of x under the modules `bns` (checked: one mode, features
    summing to x's channels), updating their running statistics in training mode; `stats` the
    pool's statistics when already computed."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    eps = _eps(bns, acc, x.device)
    if not (bns[0].training or bns[0].running_mean is None):  # eval mode: the running statistics
        mean = torch.cat([bn.running_mean.to(acc) for bn in bns])
        var = torch.cat([bn.running_var.to(acc) for bn in bns])
        return torch.stack([mean, torch.rsqrt(var + eps)])
    if stats is None:
        stats = pool_stats(x, kind)
    mean, var = stats[0], stats[1]
    count = x.numel() // x.shape[1]
    start = 0
    for bn in bns:
        end = start + bn.num_features
        _update_running_stats(bn, mean[start:end], var[start:end], count)
        start = end
    return torch.stack([mean, torch.rsqrt(var + eps)])


def _eps(bns: List[BatchNorm], acc: torch.dtype, device: torch.device):
    """The modules' eps: one number when they agree, else one per channel."""
    if all(bn.eps == bns[0].eps for bn in bns):
        return bns[0].eps
    return torch.cat([torch.full((bn.num_features,), bn.eps, dtype=acc, device=device) for bn in bns])


def _update_running_stats(bn: BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """BatchNorm's training-mode update of `bn` from a batch of `count` values per channel with
    this mean and biased variance: the running mean and unbiased running variance move by
    momentum (a cumulative average when momentum is None), num_batches_tracked counts up."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var.detach() * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


if HAS_OPS:

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
