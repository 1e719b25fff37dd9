"""Published evaluation (training from scratch) protocols: the values each one fixes, with the
script or paper each value comes from (docs/training.md lists them in a table).

A protocol is a plain mapping of :class:`~gaea_nas.train.config.TrainConfig` field values;
every field a protocol does not name keeps the dataclass default. Epochs are 0-based and the
learning rate of epoch ``e`` is the scheduler's value after ``e`` steps (the scheduler is
stepped after each epoch, see :meth:`TrainConfig.lr_at`).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

__all__ = ["PROTOCOLS", "PROTOCOL_SOURCES", "protocol_values", "protocols_for_space"]

_DARTS_CIFAR: Dict[str, Any] = dict(
    network="cifar", dataset="cifar10", channels=36, layers=20, auxiliary_weight=0.4,
    batch_size=96, eval_batch_size=96, epochs=600, lr=0.025, lr_schedule="cosine", min_lr=0.0,
    momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, cutout=16, drop_path=0.2,
    label_smoothing=0.0, ema_decay=0.0,
)

_IMAGENET_DARTS: Dict[str, Any] = dict(
    network="imagenet", dataset="", channels=48, layers=14, auxiliary_weight=0.4,
    batch_size=128, eval_batch_size=128, epochs=250, lr=0.1, lr_schedule="exponential", lr_gamma=0.97,
    min_lr=0.0, momentum=0.9, nesterov=False, weight_decay=3e-5, grad_clip=5.0, cutout=0, drop_path=0.0,
    label_smoothing=0.1, ema_decay=0.0, image_size=224, resize=256, color_jitter=(0.4, 0.4, 0.4, 0.2),
)

_IMAGENET_PCDARTS: Dict[str, Any] = dict(
    _IMAGENET_DARTS, batch_size=1024, eval_batch_size=1024, lr=0.5, lr_schedule="linear", warmup_epochs=5,
)

PROTOCOLS: Dict[str, Dict[str, Any]] = {
    "darts": _DARTS_CIFAR,
    "pcdarts": dict(_DARTS_CIFAR, drop_path=0.3),
    "gaea": dict(_DARTS_CIFAR, drop_path=0.3),
    "imagenet-darts": _IMAGENET_DARTS,
    "imagenet-pcdarts": _IMAGENET_PCDARTS,
    "imagenet-gaea": dict(_IMAGENET_PCDARTS, ema_decay=0.999),
    "nb201": dict(
        network="nb201", dataset="cifar10", channels=16, cells=5, auxiliary_weight=0.0,
        batch_size=256, eval_batch_size=256, epochs=200, lr=0.1, lr_schedule="cosine", min_lr=0.0,
        momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=0.0, cutout=0, drop_path=0.0,
        label_smoothing=0.0, ema_decay=0.0,
    ),
}

#: Where each protocol's values come from (repository and file, or paper).
PROTOCOL_SOURCES: Dict[str, Tuple[str, ...]] = {
    "darts": ("quark0/darts cnn/train.py (argparse defaults; --auxiliary --cutout as in the README command)",),
    "pcdarts": ("yuhuixu1993/PC-DARTS train.py (drop_path_prob 0.3; otherwise the DARTS script)",),
    "gaea": ("liamcli/gaea_release README evaluation command (drop path 0.3, the PC-DARTS training script)",),
    "imagenet-darts": ("quark0/darts cnn/train_imagenet.py (argparse defaults, StepLR(1, gamma=0.97), "
                       "CrossEntropyLabelSmooth(0.1) on the training loss)",),
    "imagenet-pcdarts": ("yuhuixu1993/PC-DARTS train_imagenet.py (batch 1024, lr 0.5, adjust_lr linear decay, "
                         "lr * (epoch + 1) / 5 for the first 5 epochs when the batch exceeds 256)",),
    "imagenet-gaea": ("determined-ai/determined examples/nas/gaea_pytorch/eval (the PC-DARTS ImageNet protocol "
                      "plus an exponential moving average of the weights, decay 0.999)",),
    "nb201": ("D-X-Y/AutoDL-Projects configs/NAS-Bench-201/LESS.config and the NAS-Bench-201 paper "
              "(200 epochs, batch 256, SGD Nesterov 0.1, wd 5e-4, cosine to 0, no warm-up)",),
}


def protocol_values(name: str) -> Dict[str, Any]:
    """A copy of protocol ``name``'s field values; ``ValueError`` listing the protocols otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {name!r}")
    return dict(PROTOCOLS[name], protocol=name)


def protocols_for_space(space: str) -> Tuple[str, ...]:
    """The protocols that train a cell of ``space`` (``"darts"`` or ``"nb201"``)."""
    return tuple(n for n, v in PROTOCOLS.items() if (v["network"] == "nb201") == (space == "nb201"))
