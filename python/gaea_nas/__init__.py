"""gaea_nas: NAS search spaces, supernets, discrete networks and NAS-Bench-201 look-ups,
built on the gaea_ext fused ops.

    from gaea_nas import NB201SuperNet, DartsSuperNet, NB201Network, NetworkCIFAR, \\
        NetworkImageNet, Genotype, genotypes, derive_genotype, parse_arch, format_arch, \\
        NB201Table, count_parameters, count_macs
"""
from . import checkpoint, data, genotypes, schedules, search_config
from .arch_params import ArchParameters
from .costs import count_macs, count_parameters
from .darts_networks import NetworkCIFAR, NetworkImageNet
from .darts_space import DartsSuperNet
from .genotypes import Genotype, derive_genotype
from .mixing import mix_node
from .nb201_space import NB201Network, NB201SuperNet, derive_nb201_arch, format_arch, is_valid_arch, parse_arch
from .nb201_table import NB201Table

__all__ = [
    "checkpoint",
    "data",
    "schedules",
    "search_config",
    "ArchParameters",
    "DartsSuperNet",
    "Genotype",
    "NB201Network",
    "NB201SuperNet",
    "NB201Table",
    "NetworkCIFAR",
    "NetworkImageNet",
    "count_macs",
    "count_parameters",
    "derive_genotype",
    "derive_nb201_arch",
    "format_arch",
    "genotypes",
    "is_valid_arch",
    "mix_node",
    "parse_arch",
]
