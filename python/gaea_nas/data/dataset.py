"""The in-memory ``Dataset`` record every loader returns, and per-channel statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

__all__ = ["Dataset", "channel_stats"]


@dataclass
class Dataset:
    """Decoded images and labels of one dataset, all in host memory.

    ``*_images`` are uint8 ``[N, H, W, 3]`` (RGB), ``*_labels`` int64 ``[N]`` in
    ``0..num_classes-1``; ``mean``/``std`` are per-channel figures on the 0..1 scale.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    source: str = ""
    from_cache: bool = field(default=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) of every image."""
        return int(self.train_images.shape[1]), int(self.train_images.shape[2])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, classes={self.num_classes}, "
                f"from_cache={self.from_cache})")


def channel_stats(images: np.ndarray, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 ``[N, H, W, C]`` images, in chunks."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected non-empty [N, H, W, C] images, got shape {images.shape}")
    c = images.shape[-1]
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].reshape(-1, c).astype(np.float64)
        s += x.sum(0)
        s2 += np.square(x).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)
