"""What is searched: the search spaces, each behind the one supernet protocol.

- :mod:`.nb201` and :mod:`.darts`: one package per space (op table, architectures as text,
  supernet, discrete networks, and NAS-Bench-201's accuracy table).
- Shared by both: :mod:`.arch_params` (architecture parameters of a cell type),
  :mod:`.op_table` (how an op is built and fused), :mod:`.mixing` (node mixing on the fused
  ops) and :mod:`.supernet` (the protocol the search loop and the CLI use).

:data:`SUPERNETS` maps a space's name to its supernet class.
"""
from typing import Dict, Type

from .arch_params import ArchParameters
from .darts import DartsSuperNet
from .nb201 import NB201SuperNet
from .supernet import SuperNet

SUPERNETS: Dict[str, Type[SuperNet]] = {cls.space: cls for cls in (NB201SuperNet, DartsSuperNet)}

__all__ = ["SUPERNETS", "ArchParameters", "SuperNet", "supernet_class"]


def supernet_class(space: str) -> Type[SuperNet]:
    """The supernet class of the space named ``space`` (``"nb201"``, ``"darts"``)."""
    try:
        return SUPERNETS[space]
    except KeyError:
        raise ValueError(f"unknown search space {space!r}; expected one of {sorted(SUPERNETS)}") from None
