"""One search iteration of first-order differentiable NAS (docs/method.md §2.7-2.8).

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


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> Optional[float]:
    if logits.dim() == 2 and targets.dtype == torch.int64:
        return float((logits.detach().argmax(1) == targets).float().mean())
    return None


def _arch_step(model, batch, arch_optimizer, loss_fn, regularizer, params, grad_clip, reduce_grads):
    inputs, targets = batch
    logits = model(inputs)
    loss = loss_fn(logits, targets)
    if regularizer is not None:
        loss = loss + regularizer()
    value = _check_finite(loss, "architecture")
    params = list(model.arch_parameters() if params is None else params)
    _grads_into(params, loss)
    if reduce_grads is not None:
        reduce_grads(params)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(params, grad_clip)
    arch_optimizer.step()
    return value, logits


def arch_step(
    model: nn.Module,
    batch: Batch,
    arch_optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable = F.cross_entropy,
    regularizer: Optional[Callable[[], torch.Tensor]] = None,
    params: Optional[Sequence[nn.Parameter]] = None,
    grad_clip: Optional[float] = None,
    reduce_grads: Optional[Callable[[Sequence[nn.Parameter]], None]] = None,
) -> float:
    """Architecture step on `batch`: gradients of the arch params only, then their optimiser.

    `params` defaults to `model.arch_parameters()`. `regularizer()` is added to the loss;
    `reduce_grads(params)` runs on the fresh grads before the step (data-parallel runs
    all-reduce them there); `grad_clip` clips their global norm. Returns the loss; raises
    NonFiniteLossError before any update if it is NaN/Inf.
    """
    return _arch_step(model, batch, arch_optimizer, loss_fn, regularizer, params, grad_clip, reduce_grads)[0]


def weight_step(
    model: nn.Module,
    batch: Batch,
    weight_optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable = F.cross_entropy,
    grad_clip: Optional[float] = 5.0,
    params: Optional[Sequence[nn.Parameter]] = None,
) -> Tuple[float, torch.Tensor]:
    """Weight step on `batch`: gradients of the weights only, norm clipped to `grad_clip`,
    then the weight optimiser. Returns (loss, logits detached).

    `params` defaults to `model.weight_parameters()`. The gradients come from
    `loss.backward(inputs=params)`, so a DistributedDataParallel `model` reduces them with
    its own hooks; params the loss does not reach (GDAS) get zero gradients."""
    inputs, targets = batch
    logits = model(inputs)
    loss = loss_fn(logits, targets)
    value = _check_finite(loss, "weight")
    weights = list(model.weight_parameters() if params is None else params)
    for p in weights:
        p.grad = None
    loss.backward(inputs=weights)
    for p in weights:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(weights, grad_clip)
    weight_optimizer.step()
    return value, logits.detach()


def search_iteration(
    model: nn.Module,
    train_batch: Batch,
    search_batch: Optional[Batch],
    arch_optimizer: Optional[torch.optim.Optimizer],
    weight_optimizer: torch.optim.Optimizer,
    *,
    update_arch: bool = True,
    grad_clip: Optional[float] = 5.0,
    loss_fn: Callable = F.cross_entropy,
    arch_grad_clip: Optional[float] = None,
    weight_model: Optional[nn.Module] = None,
    arch_model: Optional[nn.Module] = None,
    reduce_arch_grads: Optional[Callable[[Sequence[nn.Parameter]], None]] = None,
) -> Dict[str, float]:
    """One iteration: the architecture step on `search_batch` (skipped while
    `update_arch` is False, e.g. during a warm-up), then the weight step on `train_batch`.

    `weight_model` (e.g. the DistributedDataParallel wrapper of `model`) runs the weight
    step's forward and `arch_model` (e.g. a compiled `model`) the arch step's; both default
    to `model`, whose `arch_parameters()` / `weight_parameters()` are the ones updated. Returns the losses and, for
    classification, the accuracies on both batches (`train_acc`, `search_acc`)."""
    out: Dict[str, float] = {}
    if update_arch:
        if search_batch is None or arch_optimizer is None:
            raise ValueError("search_iteration: update_arch needs a search_batch and an arch_optimizer")
        loss, logits = _arch_step(arch_model if arch_model is not None else model, search_batch, arch_optimizer,
                                  loss_fn, None, model.arch_parameters(), arch_grad_clip, reduce_arch_grads)
        out["search_loss"] = loss
        acc = _accuracy(logits, search_batch[1])
        if acc is not None:
            out["search_acc"] = acc
    out["train_loss"], logits = weight_step(weight_model if weight_model is not None else model, train_batch,
                                            weight_optimizer, loss_fn=loss_fn, grad_clip=grad_clip,
                                            params=model.weight_parameters())
    acc = _accuracy(logits, train_batch[1])
    if acc is not None:
        out["train_acc"] = acc
    return out
