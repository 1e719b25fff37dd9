"""gaea_nas.train: train a cell from scratch under a published protocol (``gaea train``).

    spec = resolve_arch("DARTS_V2")                     # or a Genotype literal, an NB201 string, a run folder
    cfg = resolve_config(spec.space, spec.arch, "darts", epochs=10)
    result = run_train(cfg, TrainOptions(device="cuda"), "runs/darts_v2")
"""
from .arch_source import ArchSpec, canonical_genotype, resolve_arch
from .config import TrainConfig, TrainOptions, resolve_config
from .loop import TrainError, TrainInterrupted, build_network, run_train
from .protocols import PROTOCOL_SOURCES, PROTOCOLS, protocol_values, protocols_for_space

__all__ = ["ArchSpec", "PROTOCOLS", "PROTOCOL_SOURCES", "TrainConfig", "TrainError", "TrainInterrupted",
           "TrainOptions", "build_network", "canonical_genotype", "protocol_values", "protocols_for_space",
           "resolve_arch", "resolve_config", "run_train"]
