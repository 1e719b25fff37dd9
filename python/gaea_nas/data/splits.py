"""Seeded subsets and splits, and the two batch streams a search step uses (docs/method.md §2.7).

- ERM: weights and architecture both draw from the full (or subset) train set, as two
  independently shuffled streams with different seeds.
- Bilevel: a seeded split of the train set (``train_portion`` 0.5): one part for the weights,
  the other for the architecture. ``search_on_test_half=True`` instead gives the weights the full
  train set and the architecture a seeded half of the test set (NB201's CIFAR-100 and
  ImageNet16-120 protocol).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .augment import BatchAugment
from .batches import DeviceBatches, DeviceData, mix_seed
from .dataset import Dataset

__all__ = ["search_streams", "split_indices", "subset_indices"]


def subset_indices(n: int, count: Optional[int], seed: int) -> torch.Tensor:
    """A seeded random subset of ``count`` of ``range(n)`` (sorted); all of them if None."""
    if count is None or count >= n:
        return torch.arange(n)
    if count < 1:
        raise ValueError(f"subset size must be >= 1, got {count}")
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5B5E7))
    return torch.randperm(n, generator=g)[:count].sort().values


def split_indices(indices: torch.Tensor, portion: float = 0.5, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint split of ``indices`` into ``(first, second)`` with ``len(first) = floor(portion * n)``."""
    if not 0.0 < portion < 1.0:
        raise ValueError(f"portion must be in (0, 1), got {portion}")
    indices = torch.as_tensor(indices, dtype=torch.int64)
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5971))
    perm = indices[torch.randperm(len(indices), generator=g)]
    k = int(len(indices) * portion)
    if k == 0 or k == len(indices):
        raise ValueError(f"cannot split {len(indices)} items at portion {portion}")
    return perm[:k].sort().values, perm[k:].sort().values


def search_streams(dataset: Dataset, objective: str, batch_size: int, seed: int = 0, *,
                   device="cpu", train_portion: float = 0.5, train_images: Optional[int] = None,
                   cutout: int = 0, channels_last: bool = False, search_on_test_half: bool = False,
                   rank: int = 0, world_size: int = 1,
                   search_fresh_draws: bool = False) -> Tuple[DeviceBatches, DeviceBatches]:
    """``(weight_stream, arch_stream)`` for ``objective`` ``"erm"`` or ``"bilevel"``.

    Images go to ``device`` once and are shared by both streams; both use train-time
    augmentation. ``train_images`` takes a seeded subset of the train set first.
    ``search_fresh_draws`` draws every architecture batch independently (the release's
    sampling; see :class:`DeviceBatches`).
    """
    if objective not in ("erm", "bilevel"):
        raise ValueError(f"objective must be 'erm' or 'bilevel', got {objective!r}")
    aug = BatchAugment(dataset.mean, dataset.std, cutout=cutout, channels_last=channels_last)
    data = DeviceData.from_arrays(dataset.train_images, dataset.train_labels, device)
    pool = subset_indices(len(data), train_images, seed)
    kw = dict(transform=aug, rank=rank, world_size=world_size, drop_last=True)
    search_kw = dict(kw, fresh_draws=search_fresh_draws)
    if objective == "erm":
        return (DeviceBatches(data, batch_size, indices=pool, seed=mix_seed(seed, 1), **kw),
                DeviceBatches(data, batch_size, indices=pool, seed=mix_seed(seed, 2), **search_kw))
    if search_on_test_half:
        test = DeviceData.from_arrays(dataset.test_images, dataset.test_labels, device)
        _, xvalid = split_indices(torch.arange(len(test)), 0.5, seed)
        return (DeviceBatches(data, batch_size, indices=pool, seed=mix_seed(seed, 1), **kw),
                DeviceBatches(test, batch_size, indices=xvalid, seed=mix_seed(seed, 2), **search_kw))
    first, second = split_indices(pool, train_portion, seed)
    return (DeviceBatches(data, batch_size, indices=first, seed=mix_seed(seed, 1), **kw),
            DeviceBatches(data, batch_size, indices=second, seed=mix_seed(seed, 2), **search_kw))
