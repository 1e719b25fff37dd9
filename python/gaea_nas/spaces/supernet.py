"""The supernet protocol: what every search space's supernet offers the search loop and the CLI.

A supernet is an ``nn.Module`` whose forward returns logits and which holds one
:class:`~gaea_nas.spaces.arch_params.ArchParameters` per cell type. Through this base class the
loop, the builders and the command line treat every space alike:

- ``space``: the space's registry name; ``depth_field``: the search-config field that sets
  its depth (the CLI's ``--cells``); :meth:`from_config` builds one from a search config.
- ``op_names``: the candidate ops, in column order of the architecture weights.
- :meth:`arch_cells`: ``{cell type: ArchParameters}`` (``normal``, and ``reduce`` where the
  space has reduction cells); ``arch_kind``: their parameterisation.
- :meth:`arch_parameters` / :meth:`weight_parameters`: the two optimisers' parameters.
- :meth:`derivation_weights`: per cell type, the ``[edges, ops]`` weights the derivation rule
  reads; :meth:`derive`: the discrete architecture (in the space's own form);
  :meth:`derived_arch`: the same as text that the space's parser reads back.
- :meth:`load_arch`: put a discrete architecture into the architecture weights.
- :meth:`lookup_table`: a table of known results for derived architectures, if the space has one.
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from .arch_params import ArchParameters, arch_parameters, weight_parameters

__all__ = ["SuperNet"]


class SuperNet(nn.Module):
    """Base class of the search supernets (see the module docstring)."""

    space: str = ""
    depth_field: str = ""
    op_names: tuple = ()

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "SuperNet":
        """The supernet a search config describes, for ``num_classes`` classes."""
        raise NotImplementedError

    def arch_cells(self) -> Dict[str, ArchParameters]:
        """The architecture parameters of each cell type, in a fixed order."""
        raise NotImplementedError

    @property
    def arch_kind(self) -> str:
        """The parameterisation of the architecture: simplex, softmax, gdas or gaea-gdas."""
        return next(iter(self.arch_cells().values())).kind

    def arch_parameters(self) -> List[nn.Parameter]:
        """Every architecture parameter (op weights, then edge weights, per cell type)."""
        return arch_parameters(self)

    def weight_parameters(self) -> List[nn.Parameter]:
        """Every parameter that is not an architecture parameter."""
        return weight_parameters(self)

    def set_tau(self, tau: float) -> None:
        """Set the GDAS sampling temperature of every cell type."""
        for cell in self.arch_cells().values():
            cell.tau = float(tau)

    @torch.no_grad()
    def derivation_weights(self) -> Dict[str, torch.Tensor]:
        """Per cell type, the ``[edges, ops]`` weights the derivation rule reads (float64, CPU)."""
        raise NotImplementedError

    def derive(self, exclude_none: bool = False) -> Any:
        """The discrete architecture the current weights give, in the space's own form."""
        raise NotImplementedError

    def derived_arch(self, exclude_none: bool = False) -> str:
        """:meth:`derive` as text that the space's arch parser reads back."""
        return str(self.derive(exclude_none=exclude_none))

    def load_arch(self, arch: Any) -> None:
        """Set the architecture weights one-hot on ``arch`` (simplex kinds; edge weights to 1)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short description of the supernet's size for logs, e.g. ``"C=16, N=5"``."""
        raise NotImplementedError

    @classmethod
    def lookup_table(cls, path: Optional[str] = None) -> Optional[Any]:
        """The space's table of known results (with ``summary(arch)``), or None when the space
        has none. Raises ``FileNotFoundError`` when the space has one but it is not found."""
        return None
