"""gaea_ext.optim.ExponentiatedGradient: GAEA's architecture optimizer on the fused EG op."""
import warnings
from typing import Iterable, Optional, Sequence

import torch
from torch.optim import Optimizer

from ._checks import FLOAT_DTYPES as _FLOAT_DTYPES
from ._checks import check_exp_grad_options, check_lr, check_param_and_grad, per_param_segments
from .exp_grad import exp_grad_step_multi_, raise_for_flag, status_flag


class ExponentiatedGradient(Optimizer):
    """Exponentiated gradient (mirror descent on products of simplices), docs/method.md 2.2-2.6.

    Each param's last dimension holds simplices (split by `segments`, per param group); a
    step multiplies by exp(-lr * grad), clamps at `min_value` and renormalises (or the
    reverse with `order="normalize_then_clamp"`). `entropic_reg` adds the KL-to-uniform
    regulariser's gradient; `adaptive=True` uses lr / max|grad| per tensor. One fused call
    per param group. With `check_finite=True` (default) a NaN/Inf grad or an invalid param
    simplex raises ValueError naming both conditions found and no param changes (one flag
    read per step); with False nothing is read back (bar the first step's simplex check,
    below) and `self.found_nonfinite` (a 0-d int32 device tensor, None before the first step)
    accumulates the op's status flags instead: the bitwise OR over steps of NONFINITE_GRAD (1)
    and INVALID_PARAM (2), so a skipped step stays visible. Bad hyper-parameters raise TypeError (wrong type) or ValueError (wrong
    value), as exp_grad_step_ does. A step bumps each stepped param's version counter, as
    torch.optim's in-place updates do: a backward through a graph that saved a param before
    the step raises autograd's "modified by an inplace operation" error.

    The params must be probability simplices, not logits: at its first step the optimizer
    checks (once, reading one small tensor back) that every row of every param, or every
    segment of it for a group with `segments`, sums to 1, and warns once (UserWarning)
    naming the first param that does not; the step itself renormalises such rows. The
    usual causes are logits passed as params (use `alpha.softmax(-1)` or a uniform
    `torch.full(shape, 1 / k)` instead) and PC-DARTS / GAEA edge weights (one row holding
    every node's incoming edges, each node's edges a simplex) given without `segments`:
    without them the whole row of 14 is renormalised as one simplex; pass
    `segments=[2, 3, 4, 5]` for that group.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        *,
        min_value: float = 1e-5,
        entropic_reg: float = 0.0,
        segments: Optional[Sequence[int]] = None,
        order: str = "clamp_then_normalize",
        adaptive: bool = False,
        check_finite: bool = True,
    ):
        check_lr(lr)
        check_exp_grad_options(segments, min_value, order, entropic_reg)
        defaults = dict(
            lr=lr, min_value=min_value, entropic_reg=entropic_reg,
            segments=None if segments is None else list(segments), order=order, adaptive=adaptive,
        )
        super().__init__(params, defaults)
        self.check_finite = check_finite
        self.found_nonfinite: Optional[torch.Tensor] = None
        self._simplices_checked = False

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_exp_grad_options(group["segments"], group["min_value"], group["order"], group["entropic_reg"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one EG step on every param with a grad; returns the closure's loss.

        Param groups that share `order` and `adaptive` (normally all of them) are updated
        in one fused call, each param with its own group's lr, segments, min_value and
        entropic_reg.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            call = calls.setdefault((group["order"], bool(group["adaptive"])), {
                "params": [], "grads": [], "lr": [], "segments": [], "min_value": [], "entropic_reg": [],
            })
            call["params"] += params
            call["grads"] += [p.grad for p in params]
            for key in ("lr", "min_value", "entropic_reg"):
                call[key] += [group[key]] * len(params)
            call["segments"] += [group["segments"]] * len(params)
        if not calls:
            return loss
        if not getattr(self, "_simplices_checked", False) and not torch.compiler.is_compiling():
            self._simplices_checked = True
            self._warn_unless_simplices()
        if self.check_finite and len(calls) > 1:
            # Several fused calls: make sure none will refuse before any of them writes.
            self._precheck(list(calls.values()))
        flags = []
        for (order, adaptive), call in calls.items():
            segments = call["segments"] if any(s is not None for s in call["segments"]) else None
            flags.append(exp_grad_step_multi_(
                call["params"], call["grads"], call["lr"], segments=segments, min_value=call["min_value"],
                order=order, entropic_reg=call["entropic_reg"], adaptive=adaptive, check_finite=False,
            ))
        flag = flags[0]
        for other in flags[1:]:  # the flags are bit sets: OR, never max (2 would hide 1)
            flag = torch.bitwise_or(flag, other)
        if self.check_finite:
            raise_for_flag(int(flag))
        else:
            self.found_nonfinite = flag if self.found_nonfinite is None else torch.bitwise_or(self.found_nonfinite, flag)
        for call in calls.values():
            for p in call["params"]:
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
        return loss

    def _warn_unless_simplices(self) -> None:
        """Warn (UserWarning) if a row, or a segment of one, of a param with a grad does not
        sum to 1; one read of the worst sum per param. Non-finite or malformed params are
        left to the step's own checks."""
        found = []
        for g, group in enumerate(self.param_groups):
            segments = group["segments"]
            for i, p in enumerate(group["params"]):
                if p.grad is None or p.dim() < 1 or p.numel() == 0 or p.dtype not in _FLOAT_DTYPES:
                    continue
                lengths = list(segments) if segments else [p.shape[-1]]
                if sum(lengths) != p.shape[-1]:
                    continue
                sums = torch.cat([piece.detach().sum(-1, dtype=torch.float64).reshape(-1)
                                  for piece in p.split(lengths, dim=-1)])
                worst = sums[(sums - 1.0).abs().argmax()]
                found.append((g, i, p, segments, worst))
        if not found:
            return
        worsts = torch.stack([w.cpu() for *_, w in found]).tolist()
        for (g, i, p, segments, _), total in zip(found, worsts):
            tol = 1e-2 if p.dtype in (torch.float16, torch.bfloat16) else 1e-3
            if abs(total - 1.0) > tol:  # False for NaN: the step reports invalid params itself
                part = "a segment of a row" if segments else "a row"
                warnings.warn(
                    f"ExponentiatedGradient: {part} of param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)}, "
                    f"segments={segments}) sums to {total:.6g}, not 1. EG keeps probability simplices (each row "
                    f"of the last dimension, or each segment of it with `segments`) and renormalises them, so "
                    f"pass probabilities, not logits (e.g. alpha.softmax(-1), or torch.full(shape, 1 / k)). "
                    f"PC-DARTS / GAEA edge weights (one row holding every node's incoming edges) need "
                    f"`segments`, e.g. segments=[2, 3, 4, 5] for 14 edges: without them the whole row is "
                    f"renormalised as one simplex. (Warned once per optimizer, at its first step.)",
                    UserWarning, stacklevel=3)
                return

    @staticmethod
    def _precheck(calls) -> None:
        """Raise, before any call writes, if any of the calls would refuse its step."""
        flag = None
        for call in calls:
            seg_lists = per_param_segments(call["segments"], len(call["params"]))
            for p, g, segments in zip(call["params"], call["grads"], seg_lists):
                check_param_and_grad(p, g, segments)
            one = status_flag(call["params"], call["grads"], seg_lists)
            flag = one if flag is None else torch.bitwise_or(flag, one)
        raise_for_flag(int(flag))
