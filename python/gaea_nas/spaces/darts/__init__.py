"""The DARTS / PC-DARTS search space: op table, genotypes, the search supernet and the
evaluation networks (docs/method.md §4.1 and §4.3)."""
from . import genotypes
from .genotypes import PUBLISHED, Genotype, derive_darts_cell, derive_genotype, get_genotype, parse_genotype
from .networks import DiscreteCell, NetworkCIFAR, NetworkImageNet
from .ops import DARTS_OP_TABLE, DARTS_OPS, DARTS_OPS_NOZERO, OPS, PRIMITIVES, build_op, search_op
from .supernet import DartsSearchCell, DartsSuperNet, channel_shuffle, copy_cell_to_discrete, edge_index

__all__ = [
    "DARTS_OP_TABLE",
    "DARTS_OPS",
    "DARTS_OPS_NOZERO",
    "OPS",
    "PRIMITIVES",
    "PUBLISHED",
    "DartsSearchCell",
    "DartsSuperNet",
    "DiscreteCell",
    "Genotype",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_op",
    "channel_shuffle",
    "copy_cell_to_discrete",
    "derive_darts_cell",
    "derive_genotype",
    "edge_index",
    "genotypes",
    "get_genotype",
    "parse_genotype",
    "search_op",
]
