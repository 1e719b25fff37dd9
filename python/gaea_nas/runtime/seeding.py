"""Seeding every RNG a run draws from."""
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every GPU); with
    ``deterministic``, also ask cuDNN and torch for deterministic algorithms (warning where
    none exists)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
