"""Op tables: how a search space builds each candidate op and how the fused mixing computes it.

Each space keeps its candidate ops in a table of :class:`OpSpec` entries keyed by op name.
An entry builds the module and declares its *fused kind*: the ``gaea_ext.mixed_terms`` kind
that computes the op inside the mixing kernel (see :data:`gaea_nas.spaces.mixing.FUSED_KINDS`),
or ``None`` when the op must run as a module. The kind holds for stride-1 edges whose input
and output widths agree; other edges run every op as a module. The mixing code reads kinds
from the table, never from the modules' internals.
"""
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, List

import torch.nn as nn

from .mixing import FUSED_KINDS

__all__ = ["OpSpec", "fused_kinds"]


@dataclass(frozen=True)
class OpSpec:
    """One candidate op: ``build(...)`` makes the module (arguments per space), ``fused_kind``
    is the kernel kind that computes it on a stride-1, same-width edge (None: run the module)."""

    build: Callable[..., nn.Module]
    fused_kind: Optional[str] = None

    def __post_init__(self):
        if self.fused_kind is not None and self.fused_kind not in FUSED_KINDS:
            raise ValueError(f"OpSpec: unknown fused kind {self.fused_kind!r}; expected one of {FUSED_KINDS}")


def fused_kinds(table: Mapping[str, OpSpec], op_names: Sequence[str], fusable: bool) -> List[str]:
    """The mixing kinds of ``op_names`` on one edge: each op's declared kind where ``fusable``
    (a stride-1, same-width edge), else ``"tensor"``; ``none`` is ``"none"`` on every edge."""
    kinds = []
    for name in op_names:
        kind = table[name].fused_kind
        if kind == "none":
            kinds.append("none")
        else:
            kinds.append(kind if fusable and kind is not None else "tensor")
    return kinds
