"""Where a training run's batches come from: CIFAR-style datasets held on the device (the
search's seeded, resumable :class:`~gaea_nas.data.DeviceBatches` plus cutout), or image
folders such as ImageNet read by worker processes
(:func:`gaea_nas.data.image_folder.image_folder_loaders`).

Both give ``train_batches(epoch, start)`` (the batches ``start..`` of ``epoch`` of this rank,
the same on every call) and ``test_batches()`` (this rank's share of the test set, in order).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch

from ..data import BatchAugment, Dataset, DeviceBatches, DeviceData, mix_seed, subset_indices
from ..data.image_folder import image_folder_loaders
from .config import TrainConfig

__all__ = ["DeviceTrainBatches", "FolderTrainBatches"]

Batch = Tuple[torch.Tensor, torch.Tensor]


class DeviceTrainBatches:
    """A dataset held on ``device``: seeded training batches (crop, flip, cutout) sharded over
    the ranks like a ``DistributedSampler`` (equal disjoint shards of one seeded permutation per
    epoch), and the test set split ``rank::world_size``, evaluated in order."""

    def __init__(self, dataset: Dataset, cfg: TrainConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        self.num_classes = dataset.num_classes
        self.image_size = tuple(dataset.image_size)
        per_rank = cfg.batch_size // world_size
        data = DeviceData.from_arrays(dataset.train_images, dataset.train_labels, device)
        pool = subset_indices(len(data), cfg.train_images, cfg.seed)
        # keep the last, smaller batch as the reference loaders do, unless it would hold one image
        # (BatchNorm cannot normalise a single sample on a 1x1 map)
        drop_last = (len(pool) // world_size) % per_rank == 1
        self.stream = DeviceBatches(data, per_rank, indices=pool, seed=mix_seed(cfg.seed, 1),
                                    transform=BatchAugment(dataset.mean, dataset.std, cutout=cfg.cutout,
                                                           channels_last=channels_last),
                                    rank=rank, world_size=world_size, drop_last=drop_last)
        self.train_size = len(pool)
        self.test = DeviceData.from_arrays(dataset.test_images, dataset.test_labels, device)
        test_pool = subset_indices(len(self.test), cfg.test_images, mix_seed(cfg.seed, 2))
        self.test_size = len(test_pool)
        self.test_indices = test_pool[rank::world_size]
        self.eval_batch = max(cfg.eval_batch_size // world_size, 1)
        self.eval_transform = BatchAugment(dataset.mean, dataset.std, train=False, channels_last=channels_last)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.stream)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.stream.load_state_dict({"epoch": epoch, "position": start, "seed": self.stream.seed})
        for _ in range(start, len(self.stream)):
            yield self.stream.next_batch()

    def test_batches(self) -> Iterator[Batch]:
        for chunk in self.test_indices.split(self.eval_batch):
            idx = chunk.to(self.test.device)
            yield self.eval_transform(self.test.images[idx]), self.test.labels[idx]


class FolderTrainBatches:
    """An image-folder dataset (``root/train``, ``root/val``) through worker processes: the
    training order of each epoch is fixed by ``(seed, epoch)`` (``set_epoch``), so a resumed
    epoch skips the batches it already trained on."""

    def __init__(self, root: str, cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1,
                 workers: int = 4, channels_last: bool = False, loaders=None):
        if loaders is None:
            loaders = image_folder_loaders(
                root, batch_size=cfg.batch_size // world_size, eval_batch_size=max(cfg.eval_batch_size // world_size, 1),
                workers=workers, train_images=cfg.train_images, test_images=cfg.test_images,
                image_size=cfg.image_size, resize=cfg.resize, color_jitter=tuple(cfg.color_jitter), rank=rank,
                world_size=world_size, seed=cfg.seed, pin_memory=device.type == "cuda")
        self.loaders, self.device, self.channels_last = loaders, device, channels_last
        self.num_classes = int(loaders.num_classes)
        self.image_size = (cfg.image_size, cfg.image_size)
        self.train_size, self.test_size = int(loaders.train_size), int(loaders.test_size)
        try:
            self._steps: Optional[int] = len(loaders.train)
        except TypeError:
            self._steps = math.ceil(self.train_size / world_size / (cfg.batch_size // world_size))

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def _to_device(self, batch) -> Batch:
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.loaders.set_epoch(epoch)
        for k, batch in enumerate(self.loaders.train):
            if k >= start:
                yield self._to_device(batch)

    def test_batches(self) -> Iterator[Batch]:
        for batch in self.loaders.test:
            yield self._to_device(batch)
