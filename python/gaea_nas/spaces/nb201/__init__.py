"""The NAS-Bench-201 search space: op table, arch strings, supernet, discrete network and the
benchmark's accuracy table (docs/method.md §4.2)."""
from .arch import (
    NB201_EDGES,
    NB201_NUM_ARCHS,
    NB201_NUM_EDGES,
    ArchLike,
    all_nb201_archs,
    arch_nodes,
    derive_nb201_arch,
    format_arch,
    is_valid_arch,
    parse_arch,
)
from .network import NB201InferCell, NB201Network, copy_supernet_weights
from .ops import NB201_OP_TABLE, NB201_OPS, NB201_OPS_NOZERO, build_nb201_op
from .supernet import NB201SearchCell, NB201SuperNet
from .table import NB201Table

__all__ = [
    "ArchLike",
    "NB201_EDGES",
    "NB201_NUM_ARCHS",
    "NB201_NUM_EDGES",
    "NB201_OP_TABLE",
    "NB201_OPS",
    "NB201_OPS_NOZERO",
    "NB201InferCell",
    "NB201Network",
    "NB201SearchCell",
    "NB201SuperNet",
    "NB201Table",
    "all_nb201_archs",
    "arch_nodes",
    "build_nb201_op",
    "copy_supernet_weights",
    "derive_nb201_arch",
    "format_arch",
    "is_valid_arch",
    "parse_arch",
]
