"""gaea_nas: NAS search spaces, supernets, discrete networks, the search loop and NAS-Bench-201
look-ups, built on the gaea_ext fused ops.

Layout:

- :mod:`gaea_nas.spaces`: what is searched (``spaces.nb201``, ``spaces.darts``, and what both
  share: architecture parameters, op tables, node mixing, the supernet protocol);
- :mod:`gaea_nas.search`: how (config and presets, schedules, builders, one iteration, the loop);
- :mod:`gaea_nas.runtime`: what long runs share (atomic writes, checkpoints, logs, signals,
  seeding, devices, DDP, progress);
- :mod:`gaea_nas.data`: datasets and device-resident batches;
- :mod:`gaea_nas.cli` (the ``gaea`` command), :mod:`gaea_nas.plots`, :mod:`gaea_nas.costs`.

The main names are importable from the top::

    from gaea_nas import NB201SuperNet, DartsSuperNet, NB201Network, NetworkCIFAR, \\
        NetworkImageNet, Genotype, genotypes, derive_genotype, parse_arch, format_arch, \\
        NB201Table, count_parameters, count_macs
"""
from . import data, runtime, search, spaces
from .costs import count_macs, count_parameters
from .runtime import checkpoint
from .search import config as search_config
from .search import schedules
from .spaces import ArchParameters, SuperNet, mixing  # noqa: F401  (mixing: the module-level switches)
from .spaces.darts import DartsSuperNet, Genotype, NetworkCIFAR, NetworkImageNet, derive_genotype, genotypes
from .spaces.mixing import mix_node
from .spaces.nb201 import NB201Network, NB201SuperNet, NB201Table, derive_nb201_arch, format_arch, is_valid_arch, parse_arch

__all__ = [
    "checkpoint",
    "data",
    "runtime",
    "schedules",
    "search",
    "search_config",
    "spaces",
    "mixing",
    "ArchParameters",
    "DartsSuperNet",
    "Genotype",
    "NB201Network",
    "NB201SuperNet",
    "NB201Table",
    "NetworkCIFAR",
    "NetworkImageNet",
    "SuperNet",
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
