"""gaea_ext.nn: drop-in modules for DARTS-style search code (guide: docs/porting.md).

  MixedOp(ops)                         a mixed op from any list of op modules; forward(x, weights)
  MixedNode(edges)                     every incoming edge of a node in one kernel call;
                                       forward(xs, weights [E, K], edge_weights=None)
  PartialChannelNode(edges, groups)    the PC-DARTS node (partial channels, bypass, shuffle)
  PRIMITIVES, darts_kind, darts_kinds  DARTS op names to kernel kinds
  simplex_parameter, init_simplex_     architecture parameters on the simplex
  node_segments(steps)                 per-node segments of an edge-weight vector ([2, 3, 4, 5])
  arch_grads(loss, arch_params)        gradients of the architecture parameters only
  drop_path_sum(inputs, drop_prob)     a discrete cell's node under drop path, in one pass
"""
from .arch import PRIMITIVES, arch_grads, darts_kind, darts_kinds, init_simplex_, node_segments, simplex_parameter
from .drop_path import drop_path_sum
from .modules import MixedNode, MixedOp, PartialChannelNode

__all__ = [
    "PRIMITIVES",
    "MixedNode",
    "MixedOp",
    "PartialChannelNode",
    "arch_grads",
    "darts_kind",
    "darts_kinds",
    "drop_path_sum",
    "init_simplex_",
    "node_segments",
    "simplex_parameter",
]
