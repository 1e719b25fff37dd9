"""The ``backend="dali"`` path of :func:`~gaea_nas.data.image_folder.image_folder_loaders`:
NVIDIA DALI reads the files on the CPU and decodes and augments them on the GPU.

Needs the ``nvidia-dali`` package and a CUDA GPU; the test suite does not cover it (neither
is available in CI). Differences from the torchvision backend, which is the reference:

* the file list (classes, subsets) is the same, and every file's size is checked against
  ``max_file_bytes`` when the list is made; the pixel cap is not applied (DALI decodes without
  a header check), and a corrupt file stops the pipeline with DALI's own error;
* the train shuffle is DALI's reader shuffle, seeded by ``seed`` and advancing each epoch:
  reproducible for a run from epoch 0, but :meth:`FolderLoaders.set_epoch` cannot jump to an
  epoch's order (it only checks its argument);
* the augmentation (random-resized crop, flip, colour jitter as brightness / contrast /
  saturation / hue twists) is DALI's, drawn from DALI's generators.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from .errors import DatasetError
from .image_folder import IMAGENET_MEAN, IMAGENET_STD, FolderIndex, FolderLoaders, folder_indexes

__all__ = ["dali_folder_loaders"]


def _check_sizes(index: FolderIndex, max_file_bytes: int) -> None:
    for i in range(len(index)):
        path = index.path(i)
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
        if size > max_file_bytes:
            raise DatasetError(f"{path}: {size} bytes exceeds the size cap of {max_file_bytes} bytes; "
                               "raise the cap if the file is genuine")


class _DaliBatches:
    """``(images float32 [B, 3, S, S] on the GPU, labels int64 [B])`` from a DALI iterator."""

    def __init__(self, iterator, batches: int):
        self.iterator, self.batches = iterator, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for out in self.iterator:  # auto_reset: the next epoch starts after StopIteration
            yield out[0]["images"], out[0]["labels"].reshape(-1).long()


def dali_folder_loaders(root, *, batch_size: int, eval_batch_size: int, workers: int,
                        train_images: Optional[int], test_images: Optional[int], image_size: int,
                        resize: int, color_jitter: Tuple[float, float, float, float], rank: int,
                        world_size: int, seed: int, max_file_bytes: int) -> FolderLoaders:
    """DALI train/test loaders with the torchvision backend's arguments (checked by the caller)."""
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError as e:
        raise RuntimeError("backend='dali' needs NVIDIA DALI (the nvidia-dali-cudaXXX package), which is not "
                           "installed; use backend='torchvision'") from e
    if not torch.cuda.is_available():
        raise RuntimeError("backend='dali' needs a CUDA GPU and none is available; use backend='torchvision'")
    classes, train_index, test_index = folder_indexes(root, train_images, test_images, seed)
    _check_sizes(train_index, max_file_bytes)
    _check_sizes(test_index, max_file_bytes)
    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    brightness, contrast, saturation, hue = color_jitter

    @pipeline_def
    def pipeline(index: FolderIndex, training: bool):
        files = [index.path(i) for i in range(len(index))]
        jpegs, labels = fn.readers.file(files=files, labels=index.labels.tolist(), shard_id=rank,
                                        num_shards=world_size, random_shuffle=training, seed=seed,
                                        pad_last_batch=not training, name="reader")
        if training:
            images = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            images = fn.color_twist(
                images, brightness=fn.random.uniform(range=[max(0.0, 1 - brightness), 1 + brightness]),
                contrast=fn.random.uniform(range=[max(0.0, 1 - contrast), 1 + contrast]),
                saturation=fn.random.uniform(range=[max(0.0, 1 - saturation), 1 + saturation]),
                hue=fn.random.uniform(range=[-360 * hue, 360 * hue]))  # degrees; torchvision's hue is in turns
            mirror = fn.random.coin_flip()
        else:
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=resize)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(image_size, image_size), mean=mean, std=std, mirror=mirror)
        return images, labels.gpu()

    device_id = torch.cuda.current_device()
    loaders = []
    for index, batch, training in ((train_index, batch_size, True), (test_index, eval_batch_size, False)):
        pipe = pipeline(index, training, batch_size=batch, num_threads=max(1, workers), device_id=device_id,
                        seed=seed + rank)
        pipe.build()
        it = DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader", auto_reset=True,
                                 last_batch_policy=LastBatchPolicy.PARTIAL)
        shard = (rank + 1) * len(index) // world_size - rank * len(index) // world_size
        loaders.append(_DaliBatches(it, -(-shard // batch)))

    def set_epoch(epoch: int) -> None:
        pass  # DALI's reader reshuffles by itself each epoch (see the module docstring)

    return FolderLoaders(loaders[0], loaders[1], len(classes), len(train_index), len(test_index), classes,
                         set_epoch)
