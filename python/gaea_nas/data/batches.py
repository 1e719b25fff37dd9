"""Seeded, resumable batches drawn from a dataset held on the training device.

``DeviceData`` moves the uint8 images (stored NCHW) and labels to the device once; any number
of ``DeviceBatches`` streams share it. Each epoch is a seeded permutation (sampling without
replacement); batch ``k`` of epoch ``e`` and its augmentation depend only on
``(seed, e, k)``, so ``state_dict()`` = (epoch, position) is enough to resume mid-epoch exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["DeviceBatches", "DeviceData", "mix_seed"]

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """Combine ints into one 63-bit seed (splitmix64-style), so (s, e+1) and (s+1, e) differ."""
    z = 0x9E3779B97F4A7C15
    for p in parts:
        z = (z ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & _MASK


@dataclass
class DeviceData:
    """Images uint8 [N, C, H, W] and labels int64 [N], both on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_arrays(cls, images: Union[np.ndarray, torch.Tensor], labels, device="cpu") -> "DeviceData":
        """From uint8 NHWC images (numpy or tensor) and labels; one copy to ``device``."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"expected uint8 [N, H, W, C] images, got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        return cls(x, y)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.labels)


Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DeviceBatches:
    """An endless, seeded stream of ``(images, labels)`` batches over ``indices`` of ``data``.

    ``for x, y in stream`` yields the rest of the current epoch and then moves to the next;
    ``next_batch()`` rolls over epochs by itself. ``transform`` (e.g. :class:`BatchAugment`)
    gets the uint8 batch and a CPU generator seeded from ``(seed, epoch, position)``; without
    it batches are uint8 NCHW. With ``world_size > 1`` every rank takes an equal, disjoint
    shard of the same epoch permutation (``batch_size`` is per rank).

    ``fresh_draws=True`` makes each batch an independent draw of ``batch_size`` distinct
    indices (the release's "fresh shuffled iterator per step" for architecture batches, i.e.
    sampling with replacement across steps); epochs keep their length and stay resumable.
    """

    def __init__(self, data: DeviceData, batch_size: int, *, indices: Optional[torch.Tensor] = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 transform: Optional[Transform] = None, rank: int = 0, world_size: int = 1,
                 fresh_draws: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.data = data
        self.indices = (torch.arange(len(data)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.int64).cpu())
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.drop_last, self.transform = bool(drop_last), transform
        self.rank, self.world_size = int(rank), int(world_size)
        self.fresh_draws = bool(fresh_draws)
        self.samples_per_epoch = len(self.indices) // self.world_size
        n = self.samples_per_epoch
        self.batches_per_epoch = n // self.batch_size if drop_last else -(-n // self.batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} samples per rank give no batch of {batch_size} with drop_last")
        self.epoch, self.position = 0, 0
        self._order: Optional[torch.Tensor] = None
        self._order_epoch = -1

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Dataset indices this rank visits in ``epoch`` (CPU int64, a permutation's shard)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = self.indices[torch.randperm(len(self.indices), generator=g)]
        else:
            order = self.indices
        return order[self.rank::self.world_size][: self.samples_per_epoch]

    def state_dict(self) -> Dict[str, int]:
        """Where the stream stands: the next batch is batch ``position`` of ``epoch``."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume at ``state`` (from :meth:`state_dict`); the following batches are identical."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this stream has {self.seed}")
        epoch, pos = int(state["epoch"]), int(state["position"])
        if not 0 <= pos < self.batches_per_epoch:
            raise ValueError(f"position {pos} outside 0..{self.batches_per_epoch - 1}")
        self.epoch, self.position = epoch, pos

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch``."""
        self.epoch, self.position = int(epoch), 0

    def _device_order(self) -> torch.Tensor:
        if self._order_epoch != self.epoch:
            self._order = self.epoch_order(self.epoch).to(self.data.device)
            self._order_epoch = self.epoch
        assert self._order is not None
        return self._order

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next batch; after the last batch of an epoch the state moves to the next epoch."""
        if self.fresh_draws:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.position, 2, self.rank))
            idx = self.indices[torch.randperm(len(self.indices), generator=g)[:self.batch_size]]
            idx = idx.to(self.data.device)
        else:
            order = self._device_order()
            idx = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        x, y = self.data.images[idx], self.data.labels[idx]
        if self.transform is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.position, 1))
            x = self.transform(x, g)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return x, y

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()
