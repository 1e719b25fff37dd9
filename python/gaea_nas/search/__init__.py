"""How a search runs: the search config and its presets (:mod:`.config`), the schedules
(:mod:`.schedules`), the builders of the supernet and optimisers (:mod:`.builders`), one
search iteration (:mod:`.step`) and the epoch loop with its run folder (:mod:`.loop`)."""
from . import builders, config, loop, schedules, step
from .builders import build_arch_optimizer, build_supernet, build_weight_optimizer
from .config import SearchConfig, default_config, release_notes
from .loop import RunOptions, SearchError, SearchInterrupted, arch_summary, load_run, run_search
from .step import NonFiniteLossError, arch_step, search_iteration, weight_step

__all__ = [
    "NonFiniteLossError",
    "RunOptions",
    "SearchConfig",
    "SearchError",
    "SearchInterrupted",
    "arch_step",
    "arch_summary",
    "build_arch_optimizer",
    "build_supernet",
    "build_weight_optimizer",
    "builders",
    "config",
    "default_config",
    "load_run",
    "loop",
    "release_notes",
    "run_search",
    "schedules",
    "search_iteration",
    "step",
    "weight_step",
]
