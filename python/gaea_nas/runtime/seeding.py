"""Seeding every RNG a run draws from."""
import random

import numpy as np
import torch

__all__ = ["MAX_SEED", "check_seed", "seed_everything"]

MAX_SEED = 2 ** 63  # seeds are 0 <= seed < MAX_SEED (torch keeps a 64-bit seed)


def check_seed(seed) -> int:
    """``seed`` as an int; ``ValueError`` unless an integer in ``[0, 2**63)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed!r}")
    return seed


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every GPU); with
    ``deterministic``, also ask cuDNN and torch for deterministic algorithms (warning where
    none exists). ``ValueError`` for a seed outside ``[0, 2**63)``."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
