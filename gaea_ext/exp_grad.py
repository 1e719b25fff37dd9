"""gaea_ext.exp_grad_step_: the exponentiated-gradient (mirror descent) step on simplices.

Kernels: csrc/cpu/exp_grad_cpu.cpp, csrc/cuda/exp_grad_cuda.cu.
Reference: gaea_ext.reference.exp_grad_step. Tests: tests/test_exp_grad.py.
"""
from typing import List, Optional, Sequence, Union

import torch

from . import reference
from ._backend import HAS_OPS, use_reference
from ._checks import (
    check_entropic_reg,
    check_lr,
    check_min_value,
    check_order,
    check_param_and_grad,
    per_param,
    per_param_segments,
)

PerParam = Union[float, Sequence[float]]

NONFINITE_GRAD = 1  # bits of the flag returned by the op (csrc/gaea_ext.h)
INVALID_PARAM = 2


def exp_grad_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    *,
    segments: Optional[Sequence[int]] = None,
    min_value: float = 1e-5,
    order: str = "clamp_then_normalize",
    entropic_reg: float = 0.0,
    adaptive: bool = False,
) -> torch.Tensor:
    """Update `param` in place by one EG step and return it.

    Rows are the last dimension; `segments` splits a row into independent simplices (e.g.
    [2, 3, 4, 5] for DARTS per-node edge weights). Per simplex of length k:
    u = p * exp(-lr * (g + entropic_reg * (log(k p) + 1))), then clamp at `min_value` and
    renormalise (`order="clamp_then_normalize"`, GAEA DARTS) or the reverse
    (`"normalize_then_clamp"`, GAEA GDAS). `adaptive=True` uses lr / max|grad|.
    Raises ValueError, leaving `param` untouched, if `grad` holds NaN/Inf or a simplex of
    `param` is not a non-negative vector with a positive sum (this reads one flag from the
    device; under torch.compile the step is skipped instead of raising). Bad arguments raise
    before anything changes: TypeError for a wrong type or dtype (param, grad, lr,
    min_value, entropic_reg, segments), ValueError for a wrong shape, value, length, layout
    (param must be contiguous) or device.
    Bumps `param`'s version counter, as PyTorch's in-place ops do (on every backend), so a
    backward that saved `param` before the step raises instead of using the new values.
    Returns `param` itself.
    """
    exp_grad_step_multi_(
        [param], [grad], lr, segments=segments, min_value=min_value, order=order,
        entropic_reg=entropic_reg, adaptive=adaptive, check_finite=True,
    )
    return param


def exp_grad_step_multi_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lr: PerParam,
    *,
    segments=None,
    min_value: PerParam = 1e-5,
    order: str = "clamp_then_normalize",
    entropic_reg: PerParam = 0.0,
    adaptive: bool = False,
    check_finite: bool = True,
) -> torch.Tensor:
    """EG step on a list of params in one fused call (one CUDA launch chain, no host sync).

    `lr`, `min_value` and `entropic_reg` are one number or one per param; `segments` is
    None, one list of lengths shared by every param, or one entry (None or a list) per
    param, so DARTS alphas and per-node edge weights go in the same call:
    `exp_grad_step_multi_([alpha, beta], [ga, gb], 0.1, segments=[None, [2, 3, 4, 5]],
    min_value=[1e-5, 0.0])`.
    All or nothing: if any grad is non-finite or any param simplex is invalid, no param
    changes. With `check_finite=True` that raises ValueError (one flag read from the
    device); with `check_finite=False` nothing is read back and the flag says it instead.
    Bad arguments raise as in :func:`exp_grad_step_`, before anything changes. Every param's
    version counter is bumped (an in-place write, as far as autograd is concerned).

    Returns the status flag: a 0-d int32 tensor on the params' device, the bitwise OR of
    NONFINITE_GRAD (1: a grad holds NaN/Inf) and INVALID_PARAM (2: a param simplex is
    invalid); 0 when the step was applied. With `check_finite=True` (outside
    torch.compile) a returned flag is always 0.
    """
    params, grads = list(params), list(grads)
    count = len(params)
    if len(grads) != count:
        raise ValueError(f"exp_grad_step_: 'grads' must have one tensor per param ({count}), got {len(grads)}")
    if not count:
        raise ValueError("exp_grad_step_: 'params' must hold at least one tensor")
    check_order(order)
    lrs = [check_lr(x) for x in per_param(lr, count, "lr")]
    min_values = [check_min_value(x) for x in per_param(min_value, count, "min_value")]
    regs = [check_entropic_reg(x) for x in per_param(entropic_reg, count, "entropic_reg")]
    seg_lists = per_param_segments(segments, count)
    for t, (p, g) in enumerate(zip(params, grads)):
        check_param_and_grad(p, g, seg_lists[t], t if count > 1 else None)
        if p.device != params[0].device:
            raise ValueError(f"exp_grad_step_: all 'params' must be on one device; params[0] is on {params[0].device}, params[{t}] on {p.device}")

    if use_reference(params[0].device, exp_grad_segments=max(map(len, seg_lists))):
        flag = _reference_step(params, grads, lrs, seg_lists, min_values, order, regs, adaptive)
    else:
        flat_segments = [length for lengths in seg_lists for length in lengths]
        with torch.no_grad():
            flag = torch.ops.gaea_ext.exp_grad_step_.default(
                params, grads, lrs, flat_segments, [len(x) for x in seg_lists], min_values, regs,
                order == "normalize_then_clamp", bool(adaptive),
            )
    if check_finite and not torch.compiler.is_compiling():
        # Inside a compiled graph the flag cannot be read without a graph break; there
        # the step is still all or nothing and the caller gets the flag.
        raise_for_flag(int(flag))
    return flag


def raise_for_flag(flag: int) -> None:
    """Turn the op's status flag into the exception the caller should see (ValueError naming
    every condition whose bit is set)."""
    problems = []
    if flag & NONFINITE_GRAD:
        problems.append("'grad' holds NaN or Inf")
    if flag & INVALID_PARAM:
        problems.append("'param' must hold finite, non-negative simplices with a positive sum")
    if problems:
        raise ValueError(f"exp_grad_step_: {'; '.join(problems)}; no parameter was changed")


def status_flag(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                seg_lists: Sequence[List[int]]) -> torch.Tensor:
    """What the op's flag would be for these params (0-d int32 on their device, computed in
    plain PyTorch without reading device values): NONFINITE_GRAD | INVALID_PARAM bits."""
    flag = torch.zeros((), dtype=torch.int32, device=params[0].device)
    for p, g, segments in zip(params, grads, seg_lists):
        flag = flag | torch.where(torch.isfinite(g).all(), 0, NONFINITE_GRAD).to(torch.int32)
        flag = flag | torch.where(_simplices_valid(p, segments), 0, INVALID_PARAM).to(torch.int32)
    return flag


@torch.no_grad()
def _reference_step(params, grads, lrs, seg_lists, min_values, order, regs, adaptive) -> torch.Tensor:
    """The same all-or-nothing contract in plain PyTorch, without reading device values
    (so it also traces under torch.compile)."""
    flag = status_flag(params, grads, seg_lists)
    ok = flag == 0
    for p, g, lr, segments, min_value, reg in zip(params, grads, lrs, seg_lists, min_values, regs):
        new = reference.exp_grad_step(p, g, lr, segments=segments or None, min_value=min_value,
                                      order=order, entropic_reg=reg, adaptive=adaptive)
        p.copy_(torch.where(ok, new, p))
    return flag


def _simplices_valid(p: torch.Tensor, segments: List[int]) -> torch.Tensor:
    """0-d bool tensor: every entry finite and >= 0 and every simplex with a positive sum."""
    valid = (torch.isfinite(p) & (p >= 0)).all()
    if p.numel() == 0:
        return valid
    lengths = segments or [p.shape[-1]]
    for piece in p.split(lengths, dim=-1):
        valid = valid & (piece.sum(-1) > 0).all()
    return valid


if HAS_OPS:

    # The schema marks `params` as written (Tensor(a!)[]), but an op defined in C++ gets a
    # fallthrough ADInplaceOrView kernel, which bumps no version counter. This kernel bumps
    # each param's (as PyTorch's own in-place ops do, so a backward that saved a param before
    # a step raises "modified by an inplace operation") and passes the call on to the kernel
    # of the backend (CPU, CUDA, or the emulated CUDA kernels).
    _after_ad_inplace_or_view = torch._C._after_ADInplaceOrView_keyset
    _exp_grad_step_op = torch.ops.gaea_ext.exp_grad_step_.default
    _version_library = torch.library.Library("gaea_ext", "IMPL")

    def _exp_grad_step_bump_versions(keyset, params, *args):
        torch.autograd.graph.increment_version(list(params))
        return _exp_grad_step_op.redispatch(keyset & _after_ad_inplace_or_view, params, *args)

    _version_library.impl("exp_grad_step_", _exp_grad_step_bump_versions, "ADInplaceOrView", with_keyset=True)

    @torch.library.register_fake("gaea_ext::exp_grad_step_")
    def _exp_grad_step_fake(params, grads, lrs, segments, segment_counts, min_values, entropic_regs,
                            normalize_first, adaptive):
        return params[0].new_empty((), dtype=torch.int32)
