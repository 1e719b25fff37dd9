"""DARTS-space genotypes: the ``Genotype`` namedtuple, published cells, parsing and derivation.

``Genotype`` has the fields and literal format of DARTS's ``genotypes.py``, so a genotype printed
by DARTS-family code pastes in unchanged::

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[...], reduce_concat=[2, 3, 4, 5])

Published cells (copied from the public repositories, names as there):

- ``DARTS_V1``, ``DARTS_V2`` (first and second order DARTS, ``quark0/darts cnn/genotypes.py``);
  ``DARTS = DARTS_V2``.
- ``PC_DARTS_cifar``, ``PC_DARTS_image`` (``yuhuixu1993/PC-DARTS genotypes.py``);
  ``PCDARTS = PC_DARTS_cifar``.
- ``GAEA_PC_DARTS_image``: GAEA PC-DARTS searched on ImageNet, as reproduced in
  ``determined-ai/determined examples/nas/gaea_pytorch/eval/model_def.py`` (docs/method.md §6).

GAEA's CIFAR-10 cell is not published in a form we could verify, so it is not included (none is
made up).
"""
from __future__ import annotations

import ast
from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..supernet import SuperNet
from .ops import DARTS_OPS, OPS

__all__ = [
    "Genotype",
    "PRIMITIVES",
    "DARTS_V1",
    "DARTS_V2",
    "DARTS",
    "PC_DARTS_cifar",
    "PC_DARTS_image",
    "PCDARTS",
    "GAEA_PC_DARTS_image",
    "PUBLISHED",
    "check_genotype",
    "parse_genotype",
    "get_genotype",
    "derive_darts_cell",
    "derive_genotype",
    "genotype_to_weights",
]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

PRIMITIVES: List[str] = list(DARTS_OPS)

DARTS_V1 = Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])  # noqa: E501
DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])  # noqa: E501
DARTS = DARTS_V2

PC_DARTS_cifar = Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))  # noqa: E501
PC_DARTS_image = Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))  # noqa: E501
PCDARTS = PC_DARTS_cifar

GAEA_PC_DARTS_image = Genotype(normal=[('skip_connect', 1), ('skip_connect', 0), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_5x5', 3), ('sep_conv_5x5', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_5x5', 1), ('max_pool_3x3', 2)], reduce_concat=range(2, 6))  # noqa: E501

#: Registry of the published cells by name.
PUBLISHED: Dict[str, Genotype] = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,
    "PC_DARTS_cifar": PC_DARTS_cifar,
    "PC_DARTS_image": PC_DARTS_image,
    "PCDARTS": PC_DARTS_cifar,
    "GAEA_PC_DARTS_image": GAEA_PC_DARTS_image,
}


# ---------------------------------------------------------------------------------------------
# validation and parsing


def _check_cell(pairs, concat, field: str, steps: Optional[int]) -> None:
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__"):
        raise ValueError(f"genotype field {field!r} must be a list of (op name, input index) pairs, got {pairs!r}")
    n = len(pairs)
    if n == 0 or n % 2:
        raise ValueError(
            f"genotype field {field!r} has {n} (op, input) pairs; a DARTS cell needs 2 per node"
            + (f", i.e. {2 * steps}" if steps else " (an even, non-zero number)"))
    if steps is not None and n != 2 * steps:
        raise ValueError(f"genotype field {field!r} has {n} (op, input) pairs; {steps} nodes need {2 * steps}")
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"genotype field {field!r}, entry {k}: expected an (op name, input index) pair, got {pair!r}")
        name, idx = pair
        if not isinstance(name, str) or name not in OPS:
            raise ValueError(
                f"genotype field {field!r}, entry {k}: unknown op {name!r}; known ops: {', '.join(DARTS_OPS)}")
        node = k // 2
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < node + 2:
            raise ValueError(
                f"genotype field {field!r}, entry {k}: input index {idx!r} is invalid for node {node} "
                f"(inputs are 0..{node + 1}: s0, s1, then earlier nodes)")
    n_states = n // 2 + 2
    try:
        concat_list = list(concat)
    except TypeError:
        raise ValueError(f"genotype concat for {field!r} must be a list or range of state indices, got {concat!r}") from None
    if not concat_list:
        raise ValueError(f"genotype concat for {field!r} is empty")
    for c in concat_list:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_states:
            raise ValueError(f"genotype concat for {field!r}: state index {c!r} is out of range 0..{n_states - 1}")


def check_genotype(genotype, steps: Optional[int] = None) -> Genotype:
    """Validate a genotype and return it as a :class:`Genotype`; ``ValueError`` says what is wrong.

    Checks: both cells have an even, non-zero number of ``(op, input)`` pairs (``2 * steps`` if
    ``steps`` is given), known op names, input indices that refer to ``s0``, ``s1`` or an earlier
    node, and concat indices in range.
    """
    if isinstance(genotype, str):
        return parse_genotype(genotype, steps=steps)
    if not isinstance(genotype, tuple) or len(genotype) != 4:
        raise ValueError(
            "a genotype is Genotype(normal, normal_concat, reduce, reduce_concat) "
            f"(a 4-tuple), got {type(genotype).__name__}: {genotype!r}")
    g = Genotype(*genotype)
    _check_cell(g.normal, g.normal_concat, "normal", steps)
    _check_cell(g.reduce, g.reduce_concat, "reduce", steps)
    return g


class _LiteralReader(ast.NodeVisitor):
    """Evaluates the restricted literal grammar of printed genotypes without ``eval``."""

    def value(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [self.value(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and not node.keywords:
            return range(*[self.value(a) for a in node.args])
        raise ValueError(f"unsupported expression in genotype literal: {ast.dump(node)[:80]}")


def parse_genotype(text: str, steps: Optional[int] = None) -> Genotype:
    """Parse a printed genotype, e.g. ``"Genotype(normal=[('sep_conv_3x3', 0), ...], ...)"``.

    Also accepts a registry name (``"DARTS_V2"``) and the ``genotypes.``-qualified call. Only
    literals (lists, tuples, strings, ints, ``range(a, b)``) are read; nothing is ``eval``-ed.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_genotype expects a string, got {type(text).__name__}")
    s = text.strip()
    if s in PUBLISHED:
        return PUBLISHED[s]
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"malformed genotype literal: {e.msg} in {s[:120]!r}") from None
    node = tree.body
    if not (isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id == "Genotype")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "Genotype"))):
        raise ValueError(f"expected 'Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)' "
                         f"or a published cell name ({', '.join(PUBLISHED)}), got {s[:120]!r}")
    reader = _LiteralReader()
    args = [reader.value(a) for a in node.args]
    kwargs = {}
    for kw in node.keywords:
        if kw.arg not in Genotype._fields:
            raise ValueError(f"unknown Genotype field {kw.arg!r}; fields are {', '.join(Genotype._fields)}")
        kwargs[kw.arg] = reader.value(kw.value)
    try:
        g = Genotype(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"malformed genotype literal: {e}") from None
    g = Genotype(normal=[tuple(p) if isinstance(p, list) else p for p in g.normal], normal_concat=g.normal_concat,
                 reduce=[tuple(p) if isinstance(p, list) else p for p in g.reduce], reduce_concat=g.reduce_concat)
    return check_genotype(g, steps=steps)


def get_genotype(genotype: Union[str, Genotype, tuple], steps: Optional[int] = None) -> Genotype:
    """A :class:`Genotype` from a Genotype/4-tuple, a published name or a printed literal; validated."""
    if isinstance(genotype, str):
        return parse_genotype(genotype, steps=steps)
    return check_genotype(genotype, steps=steps)


# ---------------------------------------------------------------------------------------------
# derivation


def derive_darts_cell(weights, op_names: Sequence[str] = PRIMITIVES, steps: int = 4,
                      num_inputs: int = 2, keep: int = 2) -> List[tuple]:
    """Discretise one cell's ``[n_edges, n_ops]`` mixing weights the DARTS way.

    Per node (edges node-major, inputs ``s0, s1, n0, ...``): rank the incoming edges by their
    largest non-``none`` weight (stable sort, ties keep the lower input), keep the top ``keep``
    (strongest first, as DARTS lists them), and on each take the argmax non-``none`` op (ties:
    the lower op index). Returns ``keep * steps`` ``(op name, input index)`` pairs.
    """
    names = list(op_names)
    for n in names:
        if n not in OPS:
            raise ValueError(f"unknown DARTS op {n!r}; known ops: {', '.join(DARTS_OPS)}")
    W = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    n_edges = sum(num_inputs + i for i in range(steps))
    if W.dim() != 2 or W.shape != (n_edges, len(names)):
        raise ValueError(f"expected cell weights of shape [{n_edges}, {len(names)}] "
                         f"({steps} nodes, {len(names)} ops), got {list(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("cell weights contain NaN or Inf")
    usable = [k for k, n in enumerate(names) if n != "none"]
    if not usable:
        raise ValueError("no op other than 'none' to choose from")
    rows = W.tolist()
    gene = []
    start = 0
    for i in range(steps):
        n_in = num_inputs + i
        block = rows[start:start + n_in]
        strength = [max(row[k] for k in usable) for row in block]
        edges = sorted(range(n_in), key=lambda j: -strength[j])[:keep]
        for j in edges:
            k_best = None
            for k in usable:
                if k_best is None or block[j][k] > block[j][k_best]:
                    k_best = k
            gene.append((names[k_best], j))
        start += n_in
    return gene


def derive_genotype(supernet: SuperNet, exclude_none: Optional[bool] = None):
    """The discrete architecture of a supernet (its :meth:`~gaea_nas.spaces.supernet.SuperNet.derive`):

    - a DARTS supernet -> :class:`Genotype` by the DARTS rule (:func:`derive_darts_cell` over
      its derivation weights; ``none`` is never chosen, whatever ``exclude_none`` says);
    - an NB201 supernet -> its NB201 arch string: argmax per edge; ``none`` can be chosen
      unless ``exclude_none=True`` (default False, as in AutoDL/GAEA).
    """
    if not isinstance(supernet, SuperNet):
        raise TypeError(f"derive_genotype: expected a gaea_nas supernet, got {type(supernet).__name__}")
    return supernet.derive(exclude_none=bool(exclude_none))


def genotype_to_weights(pairs: Sequence[tuple], op_names: Sequence[str] = PRIMITIVES, steps: int = 4,
                        num_inputs: int = 2) -> torch.Tensor:
    """The one-hot ``[n_edges, n_ops]`` mixing weights of one cell type's ``(op, input)`` pairs:
    1 on each listed (edge, op), 0 elsewhere (edges not listed are all zero). Loading it as a
    simplex supernet's theta makes the supernet cell compute the discrete cell."""
    names = list(op_names)
    pairs = list(pairs)
    if len(pairs) != 2 * steps:
        raise ValueError(f"expected {2 * steps} (op, input) pairs for {steps} nodes, got {len(pairs)}")
    n_edges = sum(num_inputs + i for i in range(steps))
    w = torch.zeros(n_edges, len(names))
    for k, (name, inp) in enumerate(pairs):
        node = k // 2
        if name not in names:
            raise ValueError(f"op {name!r} is not in the op list {names}")
        if not 0 <= inp < num_inputs + node:
            raise ValueError(f"pair {k}: input index {inp} is invalid for node {node}")
        e = sum(num_inputs + i for i in range(node)) + inp
        w[e, names.index(name)] = 1.0
    return w
