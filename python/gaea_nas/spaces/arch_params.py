"""Architecture parameters of one cell type, kept apart from the network weights.

Spec: docs/method.md §2.1-2.4 and §3.

Parameterisations (`kind`):

- ``"simplex"``   GAEA: ``alpha`` *is* the mixing weight ``theta`` (rows on the simplex,
                  uniform ``1/k`` init; updated by exponentiated gradient elsewhere).
- ``"softmax"``   DARTS: ``alpha`` are logits (``1e-3 * randn`` init); weights ``softmax(alpha)``.
- ``"gdas"``      GDAS: logits as for softmax; every call of :meth:`ArchParameters.op_weights`
                  draws one op per edge by Gumbel-max over ``log_softmax(alpha)`` and returns the
                  straight-through hard one-hot ``h = onehot - stopgrad(p) + p``.
- ``"gaea-gdas"`` GAEA GDAS: ``alpha`` is ``theta`` on the simplex (uniform init); sampling uses
                  ``log(theta)`` instead of ``log_softmax``.

Optional edge weights ``beta`` (``edge_segments``, e.g. ``[2, 3, 4, 5]`` for the DARTS cell):
``edge_kind="simplex"`` (GAEA: per-node simplex, init ``1/in-degree``, used directly) or
``"softmax"`` (PC-DARTS: ``1e-3 * randn`` logits, per-node softmax in the forward pass).

GDAS sampling fetches the sampled indices of *all* edges to the host in one copy (one
``.tolist()`` of a small device tensor, which also carries the "non-finite, resample" flag);
:func:`sample_op_weights` does the same for several cell types together (one copy in all).

Supernets register their ``ArchParameters`` under attribute names starting with ``arch_``;
:func:`arch_parameters` / :func:`weight_parameters` split any module's parameters.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("simplex", "softmax", "gdas", "gaea-gdas")
EDGE_KINDS = ("simplex", "softmax")
_MAX_RESAMPLES = 100

__all__ = [
    "KINDS",
    "EDGE_KINDS",
    "ArchParameters",
    "arch_parameters",
    "weight_parameters",
    "sample_op_weights",
]


class ArchParameters(nn.Module):
    """Architecture parameters of one cell type: ``alpha [num_edges, num_ops]`` and optional
    edge weights ``beta [num_edges]``. An ``nn.Module`` holding ``nn.Parameter`` s, so they
    follow ``state_dict``, ``.to()``, DDP and pickling like any weight."""

    def __init__(
        self,
        num_edges: int,
        num_ops: int,
        kind: str = "simplex",
        edge_segments: Optional[Sequence[int]] = None,
        edge_kind: str = "simplex",
        tau: float = 10.0,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"ArchParameters: unknown kind {kind!r}; expected one of {KINDS}")
        if edge_kind not in EDGE_KINDS:
            raise ValueError(f"ArchParameters: unknown edge_kind {edge_kind!r}; expected one of {EDGE_KINDS}")
        for name, v in (("num_edges", num_edges), ("num_ops", num_ops)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ArchParameters: {name!r} must be a positive int, got {v!r}")
        self.num_edges = num_edges
        self.num_ops = num_ops
        self.kind = kind
        self.edge_kind = edge_kind
        self.tau = float(tau)
        if kind in ("simplex", "gaea-gdas"):
            alpha = torch.full((num_edges, num_ops), 1.0 / num_ops)
        else:
            alpha = 1e-3 * torch.randn(num_edges, num_ops)
        self.alpha = nn.Parameter(alpha)
        if edge_segments is None:
            self.edge_segments: Optional[List[int]] = None
            self.beta = None
        else:
            segs = [int(s) for s in edge_segments]
            if any(s < 1 for s in segs) or sum(segs) != num_edges:
                raise ValueError(
                    f"ArchParameters: 'edge_segments' must be positive lengths summing to num_edges={num_edges}, got {list(edge_segments)}"
                )
            self.edge_segments = segs
            if edge_kind == "simplex":
                beta = torch.cat([torch.full((s,), 1.0 / s) for s in segs])
            else:
                beta = 1e-3 * torch.randn(num_edges)
            self.beta = nn.Parameter(beta)
        self._index_dev: Optional[torch.Tensor] = None  # argmax of the last sample, on device
        self._indices: Optional[List[int]] = None  # the same on the host

    @property
    def is_gdas(self) -> bool:
        return self.kind in ("gdas", "gaea-gdas")

    def extra_repr(self) -> str:
        s = f"num_edges={self.num_edges}, num_ops={self.num_ops}, kind={self.kind!r}"
        if self.edge_segments is not None:
            s += f", edge_segments={self.edge_segments}, edge_kind={self.edge_kind!r}"
        if self.is_gdas:
            s += f", tau={self.tau}"
        return s

    # -- mixing weights ------------------------------------------------------------------
    def op_weights(self) -> torch.Tensor:
        """Mixing weights ``[num_edges, num_ops]``: theta (simplex), softmax(alpha) (softmax),
        or a fresh straight-through hard one-hot sample (gdas, gaea-gdas; one host copy)."""
        if self.kind == "simplex":
            return self.alpha
        if self.kind == "softmax":
            return F.softmax(self.alpha, dim=-1)
        return sample_op_weights([self])[0]

    def edge_weights(self) -> Optional[torch.Tensor]:
        """Edge weights ``[num_edges]`` or None: beta itself (simplex) or the per-node softmax
        over ``edge_segments`` (softmax)."""
        if self.beta is None:
            return None
        if self.edge_kind == "simplex":
            return self.beta
        return torch.cat([F.softmax(b, dim=-1) for b in torch.split(self.beta, self.edge_segments)])

    def sampled_indices(self) -> Optional[List[int]]:
        """GDAS: the op index sampled on each edge by the last :meth:`op_weights` call (host
        list, fetched in the sampling call's single copy). None for non-GDAS kinds."""
        if not self.is_gdas:
            return None
        return self._indices

    def sampling_logits(self) -> torch.Tensor:
        """Log-probabilities the GDAS sampler draws from: log_softmax(alpha) or log(theta)."""
        if self.kind == "gdas":
            return F.log_softmax(self.alpha, dim=-1)
        return torch.log(self.alpha)

    def _draw(self):
        logits = self.sampling_logits()
        gumbels = -torch.empty_like(logits).exponential_().log()
        probs = F.softmax((logits + gumbels) / self.tau, dim=-1)
        index = probs.detach().argmax(dim=-1)
        one_hot = torch.zeros_like(probs).scatter_(-1, index.unsqueeze(-1), 1.0)
        hard = one_hot - probs.detach() + probs
        bad = (~torch.isfinite(gumbels)).any() | (~torch.isfinite(probs.detach())).any()
        return hard, index, bad

    @torch.no_grad()
    def derivation_weights(self) -> torch.Tensor:
        """The ``[num_edges, num_ops]`` weights a discrete cell is derived from (float64, CPU,
        no sampling): ``softmax(alpha)`` (softmax, gdas) or theta itself (simplex, gaea-gdas),
        times the edge weights when they are learned (docs/method.md §4.1-4.2)."""
        alpha = self.alpha.detach().double().cpu()
        w = torch.softmax(alpha, dim=-1) if self.kind in ("softmax", "gdas") else alpha
        if self.beta is not None:
            w = w * self.edge_weights().detach().double().cpu()[:, None]
        return w

    def probabilities(self) -> torch.Tensor:
        """The categorical distribution per edge (theta normalised, or softmax(alpha)); for
        derivation and tests, no sampling."""
        if self.kind in ("simplex", "gaea-gdas"):
            return self.alpha / self.alpha.sum(dim=-1, keepdim=True)
        return F.softmax(self.alpha, dim=-1)


def sample_op_weights(modules: Sequence[ArchParameters]) -> List[torch.Tensor]:
    """Op weights of several ArchParameters. The GDAS ones are sampled together and their
    indices (plus the non-finite flag) come to the host in ONE ``.tolist()`` call; a draw with
    a non-finite value is redrawn (at most 100 times, then ValueError)."""
    out: List[Optional[torch.Tensor]] = [None] * len(modules)
    gdas = [i for i, m in enumerate(modules) if m.is_gdas]
    for i, m in enumerate(modules):
        if not m.is_gdas:
            out[i] = m.op_weights()
    if not gdas:
        return out  # type: ignore[return-value]
    pending = list(gdas)
    for _ in range(_MAX_RESAMPLES):
        draws = {i: modules[i]._draw() for i in pending}
        packed = torch.cat([torch.cat([draws[i][1], draws[i][2].to(draws[i][1].dtype).reshape(1)]) for i in pending])
        host = packed.tolist()  # the one device -> host copy
        still_bad = []
        pos = 0
        for i in pending:
            n = modules[i].num_edges
            idx, bad = host[pos : pos + n], host[pos + n]
            pos += n + 1
            if bad:
                still_bad.append(i)
                continue
            hard, index, _ = draws[i]
            modules[i]._index_dev = index
            modules[i]._indices = [int(v) for v in idx]
            out[i] = hard
        if not still_bad:
            return out  # type: ignore[return-value]
        pending = still_bad
    raise ValueError(
        "GDAS sampling: non-finite values in every one of 100 draws; the architecture parameters "
        "are probably NaN/Inf or (gaea-gdas) not positive"
    )


def _arch_modules(module: nn.Module) -> List[ArchParameters]:
    return [m for m in module.modules() if isinstance(m, ArchParameters)]


def arch_parameters(module: nn.Module) -> List[nn.Parameter]:
    """Every parameter held by an ArchParameters submodule of ``module`` (no duplicates)."""
    seen, out = set(), []
    for m in _arch_modules(module):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def weight_parameters(module: nn.Module) -> List[nn.Parameter]:
    """Every parameter of ``module`` that is not an architecture parameter."""
    arch = {id(p) for p in arch_parameters(module)}
    return [p for p in module.parameters() if id(p) not in arch]
