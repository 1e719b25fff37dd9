"""Published test errors and parameter counts of the DARTS-space networks, for comparing
training runs with them (``gaea report``). Values are as the papers (or their released code's
README) print them; ``None`` where the source gives none.

The papers report different statistics: DARTS the final epoch's error, mean and standard
deviation of 10 runs; PC-DARTS the best test error over the epochs. ``reported`` says which
(empty where the source does not say).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .spaces.darts.genotypes import PUBLISHED, get_genotype

__all__ = ["BENCHMARKS", "PUBLISHED_RESULTS", "PublishedResult", "benchmark_of", "dataset_family", "network_name",
           "published_result"]

BENCHMARKS = ("cifar10", "imagenet")

_DARTS = "Liu, Simonyan, Yang: DARTS: Differentiable Architecture Search, ICLR 2019"
_PC_DARTS = "Xu et al.: PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search, ICLR 2020"
_GAEA = "Li et al.: Geometry-Aware Gradient Algorithms for Neural Architecture Search, ICLR 2021"


@dataclass(frozen=True)
class PublishedResult:
    """One published figure: test errors in percent (top-5 on ImageNet only), parameters in
    millions (auxiliary head excluded), which epoch's figure it is, and its source."""

    network: str
    benchmark: str
    top1_error: Optional[float]
    top1_error_std: Optional[float]
    top5_error: Optional[float]
    params_m: Optional[float]
    reported: str
    source: str
    note: str = ""

    @property
    def top1(self) -> Optional[float]:
        """Top-1 accuracy in percent (100 - the error)."""
        return None if self.top1_error is None else round(100.0 - self.top1_error, 4)

    @property
    def top5(self) -> Optional[float]:
        """Top-5 accuracy in percent."""
        return None if self.top5_error is None else round(100.0 - self.top5_error, 4)


PUBLISHED_RESULTS: Dict[Tuple[str, str], PublishedResult] = {(r.network, r.benchmark): r for r in (
    PublishedResult("DARTS_V1", "cifar10", None, None, None, None, "", _DARTS,
                    "first-order DARTS cell; no figure recorded here"),
    PublishedResult("DARTS_V2", "cifar10", 2.76, 0.09, None, 3.3, "final epoch, mean of 10 runs", _DARTS,
                    "as quoted in the PC-DARTS README; the std is unverified"),
    PublishedResult("PC_DARTS_cifar", "cifar10", 2.57, 0.07, None, 3.6, "best epoch", _PC_DARTS,
                    "as quoted in the PC-DARTS README; the std is unverified"),
    PublishedResult("GAEA_PC_DARTS", "cifar10", 2.50, 0.06, None, 3.7, "", _GAEA,
                    "parameter count approximate (~3.7M)"),
    PublishedResult("DARTS_V2", "imagenet", 26.7, None, 8.7, 4.7, "", _DARTS,
                    "CIFAR-10 cell transferred to ImageNet"),
    PublishedResult("PC_DARTS_image", "imagenet", 24.2, None, 7.3, None, "", _PC_DARTS,
                    "cell searched on ImageNet"),
    PublishedResult("GAEA_PC_DARTS_image", "imagenet", 24.0, None, 7.3, 5.6, "", _GAEA,
                    "cell searched on ImageNet; top-5 unverified; 5.6M from third-party summaries"),
)}

_ALIASES = {"DARTS": "DARTS_V2", "PCDARTS": "PC_DARTS_cifar"}


def network_name(arch: str, arch_name: Optional[str] = None) -> Optional[str]:
    """The published name of a DARTS cell: ``arch_name`` when given (aliases resolved), else
    the name of the published genotype equal to ``arch`` (a Genotype literal), else None."""
    if arch_name:
        return _ALIASES.get(arch_name, arch_name)
    try:
        g = get_genotype(arch)
    except (ValueError, TypeError):
        return None
    key = _genotype_key(g)
    for name, published in PUBLISHED.items():
        if name not in _ALIASES and _genotype_key(published) == key:
            return name
    return None


def _genotype_key(g) -> tuple:
    return (tuple(map(tuple, g.normal)), tuple(g.normal_concat), tuple(map(tuple, g.reduce)), tuple(g.reduce_concat))


def dataset_family(dataset: str) -> Optional[str]:
    """``cifar10``, ``cifar100`` or ``imagenet16-120`` for a dataset name or a path whose file
    name starts with one of them (``cifar10-jpeg.tar.gz`` is CIFAR-10), else None."""
    name = str(dataset).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower().replace("-", "").replace("_", "")
    for prefix, family in (("cifar100", "cifar100"), ("cifar10", "cifar10"), ("imagenet16", "imagenet16-120")):
        if name.startswith(prefix):
            return family
    return None


def benchmark_of(protocol: str, dataset: str) -> Optional[str]:
    """``"imagenet"`` for the ImageNet protocols, ``"cifar10"`` for the CIFAR protocols on
    CIFAR-10 (see :func:`dataset_family`), else None (no published DARTS-space figure)."""
    if protocol.startswith("imagenet"):
        return "imagenet"
    if protocol in ("darts", "pcdarts", "gaea") and dataset_family(dataset) == "cifar10":
        return "cifar10"
    return None


def published_result(network: Optional[str], benchmark: Optional[str]) -> Optional[PublishedResult]:
    """The published figure of ``network`` on ``benchmark``, or None."""
    if network is None or benchmark is None:
        return None
    return PUBLISHED_RESULTS.get((_ALIASES.get(network, network), benchmark))
