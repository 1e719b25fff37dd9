"""One search iteration of first-order differentiable NAS (method.md 2.7-2.8).

The architecture step comes first, on the search batch: the loss is differentiated with
respect to the architecture parameters only (`torch.autograd.grad`), so no weight gradients
are computed in that pass. Then the weight step on the training batch: gradients of the
weights only, clipped to a global L2 norm, and the weight optimiser's step. Any model with
`arch_parameters()` and `weight_parameters()` works (every gaea_nas supernet has them).
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Batch = Tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the step was not applied."""


def _grads_into(params: Sequence[nn.Parameter], loss: torch.Tensor) -> None:
    """Set `p.grad` of exactly these params from `loss` (zeros for params it does not reach)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g


def _check_finite(loss: torch.Tensor, which: str) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the {which} loss is {value}; the step was not applied")
    return value


def arch_step(
    model: nn.Module,
    batch: Batch,
    arch_optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable = F.cross_entropy,
    regularizer: Optional[Callable[[], torch.Tensor]] = None,
) -> float:
    """Architecture step on `batch`: gradients of the arch params only, then their optimiser.

    `regularizer()` (e.g. the entropic term, if not left to the EG optimiser) is added to
    the loss. Returns the loss; raises NonFiniteLossError before any update if it is NaN/Inf.
    """
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    if regularizer is not None:
        loss = loss + regularizer()
    value = _check_finite(loss, "architecture")
    _grads_into(model.arch_parameters(), loss)
    arch_optimizer.step()
    return value


def weight_step(
    model: nn.Module,
    batch: Batch,
    weight_optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable = F.cross_entropy,
    grad_clip: Optional[float] = 5.0,
) -> Tuple[float, torch.Tensor]:
    """Weight step on `batch`: gradients of the weights only, norm clipped to `grad_clip`,
    then the weight optimiser. Returns (loss, logits detached)."""
    inputs, targets = batch
    logits = model(inputs)
    loss = loss_fn(logits, targets)
    value = _check_finite(loss, "weight")
    weights = model.weight_parameters()
    _grads_into(weights, loss)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(weights, grad_clip)
    weight_optimizer.step()
    return value, logits.detach()


def search_iteration(
    model: nn.Module,
    train_batch: Batch,
    search_batch: Batch,
    arch_optimizer: torch.optim.Optimizer,
    weight_optimizer: torch.optim.Optimizer,
    *,
    update_arch: bool = True,
    grad_clip: Optional[float] = 5.0,
    loss_fn: Callable = F.cross_entropy,
) -> Dict[str, float]:
    """One iteration: the architecture step on `search_batch` (skipped while
    `update_arch` is False, e.g. during a warm-up), then the weight step on `train_batch`.
    Returns the losses and the training-batch accuracy."""
    out: Dict[str, float] = {}
    if update_arch:
        out["search_loss"] = arch_step(model, search_batch, arch_optimizer, loss_fn=loss_fn)
    out["train_loss"], logits = weight_step(model, train_batch, weight_optimizer, loss_fn=loss_fn, grad_clip=grad_clip)
    targets = train_batch[1]
    if logits.dim() == 2 and targets.dtype == torch.int64:
        out["train_acc"] = float((logits.argmax(1) == targets).float().mean())
    return out
