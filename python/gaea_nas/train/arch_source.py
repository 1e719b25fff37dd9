"""What ``gaea train ARCH`` trains: ARCH is a published DARTS-space genotype name, a pasted
``Genotype(...)`` literal (read as literals only, never evaluated), a NAS-Bench-201 arch string
or a search run folder (the ``arch`` of its ``result.json``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..spaces.darts.genotypes import PUBLISHED, Genotype, get_genotype, parse_genotype
from ..spaces.nb201.arch import format_arch

__all__ = ["ArchSpec", "canonical_genotype", "resolve_arch"]


@dataclass(frozen=True)
class ArchSpec:
    """A resolved cell: its ``space`` (``darts`` | ``nb201``), canonical text ``arch`` (a
    Genotype literal with list concats, or an NB201 arch string), the published ``name`` it
    came from (if any) and where it came from (``origin``)."""

    space: str
    arch: str
    name: Optional[str] = None
    origin: str = "literal"

    def genotype(self) -> Genotype:
        """The :class:`Genotype` of a DARTS cell."""
        if self.space != "darts":
            raise ValueError(f"{self.arch!r} is a {self.space} cell, not a DARTS genotype")
        return parse_genotype(self.arch)


def canonical_genotype(g: Genotype) -> str:
    """The literal of ``g`` with list concats (``range(2, 6)`` becomes ``[2, 3, 4, 5]``)."""
    g = get_genotype(g)
    return repr(Genotype(normal=[tuple(p) for p in g.normal], normal_concat=list(g.normal_concat),
                         reduce=[tuple(p) for p in g.reduce], reduce_concat=list(g.reduce_concat)))


def _from_text(text: str, origin: str) -> ArchSpec:
    s = text.strip()
    if s in PUBLISHED:
        return ArchSpec("darts", canonical_genotype(PUBLISHED[s]), s, "published")
    if s.startswith("|"):
        return ArchSpec("nb201", format_arch(s), None, origin)
    if "Genotype" in s:
        return ArchSpec("darts", canonical_genotype(parse_genotype(s)), None, origin)
    raise ValueError(f"ARCH: expected a published genotype ({', '.join(PUBLISHED)}), a 'Genotype(...)' literal, "
                     f"a NAS-Bench-201 arch string ('|op~0|+|op~0|op~1|+|...|') or a search run folder, got {s[:120]!r}")


def resolve_arch(text: str) -> ArchSpec:
    """The cell ARCH names; ``ValueError`` for text that is none of the four forms (or a bad
    cell), ``FileNotFoundError`` / ``ValueError`` naming ``result.json`` for a run folder
    without a usable one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("ARCH: empty")
    path = Path(text).expanduser()
    try:
        is_folder = text.strip() not in PUBLISHED and path.is_dir()
    except OSError:  # e.g. a Genotype literal longer than a file name may be
        is_folder = False
    if is_folder:
        result = path / "result.json"
        if not result.is_file():
            raise FileNotFoundError(f"{result}: not found (ARCH is a folder, but not a finished search run)")
        try:
            with open(result) as f:
                arch = json.load(f)["arch"]
            if not isinstance(arch, str):
                raise TypeError(f"'arch' is a {type(arch).__name__}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{result}: no readable 'arch' ({type(e).__name__}: {e})") from None
        try:
            return _from_text(arch, f"run:{path.resolve()}")
        except ValueError as e:
            raise ValueError(f"{result}: its arch is not a cell ({e})") from None
    return _from_text(text, "literal")
