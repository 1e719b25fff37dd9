"""gaea_ext: fused kernels for geometry-aware differentiable NAS (GAEA).

Drop-in ops for DARTS-style code:
  weighted_sum(inputs, weights)       fused mixed-op sum, differentiable in both
  sample_weighted_sum(inputs, weights [K, N])   the same with one weight per input and sample
  drop_path_sum(inputs, drop_prob)    a discrete cell's node under drop path (gaea_ext.nn)
  mixed_op(x, outputs, weights, kinds)   a mixed op with none/skip/3x3 pools computed in-kernel
  mixed_node(edges, weights)          the same for every incoming edge of a node in one call
                                      (kinds also: BN-followed pools, GDAS's "ones" terms)
  pool_stats(x, kind)                 per-channel batch mean/var of a 3x3 pool, never materialised
  partial_channel_node(mixed, states, weights, strides, groups)
                                      the PC-DARTS node (bypass, 2x2 pool, shuffle) in one pass
  pool_batch_norm(x, kind, bn)        the [mean, 1/std] norm a BN kind takes (running stats kept)
  tensor_batch_norm(x, bns)           the same for a batched conv output whose channel blocks
                                      belong to several BatchNorms ("tensor_bn" terms), one pass
  exp_grad_step_(param, grad, lr)     in-place exponentiated-gradient step on simplices
  exp_grad_step_multi_(...)           the same for a list of params in one fused call
  optim.ExponentiatedGradient         a torch.optim.Optimizer on those ops
  reference                           pure-PyTorch references of every op (correctness)
  baselines                           the eager formulations the profiler times (gaea_ext.bench)
  cuda_limits()                       the CUDA kernels' per-call limits (from the compiled kernels)
"""
from . import reference
from ._backend import HAS_EXTENSION, backend, build_info, cuda_limits
from .exp_grad import exp_grad_step_, exp_grad_step_multi_
from .mixed_node import mixed_node, mixed_op, mixed_terms
from .partial_channel import partial_channel_node
from .pool_stats import pool_batch_norm, pool_stats, tensor_batch_norm
from .sample_weighted_sum import sample_weighted_sum
from .weighted_sum import weighted_sum
from . import optim  # noqa: E402  (needs the ops above)
from . import nn  # noqa: E402  (drop-in modules on the ops above)
from .nn import drop_path_sum  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "HAS_EXTENSION",
    "backend",
    "build_info",
    "cuda_limits",
    "drop_path_sum",
    "exp_grad_step_",
    "exp_grad_step_multi_",
    "mixed_node",
    "mixed_op",
    "mixed_terms",
    "nn",
    "optim",
    "partial_channel_node",
    "pool_batch_norm",
    "pool_stats",
    "reference",
    "sample_weighted_sum",
    "tensor_batch_norm",
    "weighted_sum",
]
