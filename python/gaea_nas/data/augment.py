"""Batched, device-side image augmentation: whole-batch tensor ops, no per-image Python.

Inputs are uint8 NCHW batches on any device. Random draws (crop offsets, flips, cutout
centres) come from a CPU ``torch.Generator`` so results are identical on every device and
reproducible from a seed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "cutout", "normalize", "random_crop", "random_flip"]


def random_crop(x: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Crop every image of ``x`` [B, C, H, W] from its zero-padded copy at per-image offsets.

    ``offsets_*`` are ints in ``[0, 2 * padding]``; offset ``padding`` is the identity. Done as
    one pad and one advanced-indexing gather.
    """
    b, c, h, w = x.shape
    if padding == 0:
        return x
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets_y.to(dev).view(b, 1) + torch.arange(h, device=dev).view(1, h)
    cols = offsets_x.to(dev).view(b, 1) + torch.arange(w, device=dev).view(1, w)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images of ``x`` [B, C, H, W] where the bool ``flip`` [B] is set."""
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    out = (x.to(dtype) / 255.0 - m) / s
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def cutout(x: torch.Tensor, centres_y: torch.Tensor, centres_x: torch.Tensor, length: int = 16) -> torch.Tensor:
    """Zero a ``length`` square (clipped at the borders) around each image's centre, as DARTS'
    ``Cutout`` does (rows ``[cy - length//2, cy + length//2)``, likewise columns)."""
    b, _, h, w = x.shape
    dev = x.device
    half = length // 2
    cy = centres_y.to(dev).view(b, 1)
    cx = centres_x.to(dev).view(b, 1)
    ys = torch.arange(h, device=dev).view(1, h)
    xs = torch.arange(w, device=dev).view(1, w)
    in_rows = (ys >= cy - half) & (ys < cy + half)
    in_cols = (xs >= cx - half) & (xs < cx + half)
    hole = in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)
    return x.masked_fill(hole, 0)


class BatchAugment:
    """Train-time transform: crop (zero padding), flip, normalise, optional cutout.

    ``BatchAugment(mean, std)`` is the CIFAR recipe of DARTS/GAEA; ``train=False`` only
    normalises. Call with a uint8 NCHW batch and a CPU generator; returns float NCHW
    (``channels_last`` memory format if asked).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, padding: int = 4,
                 flip: bool = True, cutout: int = 0, train: bool = True,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32):
        self.mean, self.std = tuple(mean), tuple(std)
        self.padding, self.flip, self.cutout = int(padding), bool(flip), int(cutout)
        self.train, self.channels_last, self.dtype = bool(train), bool(channels_last), dtype

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.train and self.padding > 0:
            oy = torch.randint(0, 2 * self.padding + 1, (b,), generator=generator)
            ox = torch.randint(0, 2 * self.padding + 1, (b,), generator=generator)
            x = random_crop(x, oy, ox, self.padding)
        if self.train and self.flip:
            x = random_flip(x, torch.rand(b, generator=generator) < 0.5)
        out = normalize(x, self.mean, self.std, self.dtype)
        if self.train and self.cutout > 0:
            cy = torch.randint(0, h, (b,), generator=generator)
            cx = torch.randint(0, w, (b,), generator=generator)
            out = cutout(out, cy, cx, self.cutout)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def __repr__(self) -> str:
        return (f"BatchAugment(train={self.train}, padding={self.padding}, flip={self.flip}, "
                f"cutout={self.cutout}, channels_last={self.channels_last})")
