"""What the ops' backward functions (registered with torch.library.register_autograd) share."""
from typing import Callable, Iterable, List, Optional, Sequence

import torch


def double_backward_enabled() -> bool:
    """Whether the running backward must itself be differentiable: grad mode is on inside a
    backward exactly when it runs with create_graph=True (double backward, gradient
    penalties, DARTS' second-order approximation)."""
    return torch.is_grad_enabled()


def reference_grads(reference: Callable, args: Sequence, needs: Sequence, grad_out: torch.Tensor) -> list:
    """The op's input gradients as differentiable functions of its inputs and `grad_out`, for a
    backward with create_graph=True: `reference(*args)` (the op's pure-PyTorch reference) is
    recomputed under autograd and differentiated with create_graph=True, so every higher
    derivative is the reference's, exactly.

    `args` are the op's inputs as its backward has them: tensors, lists of tensors, or other
    values; an input the forward did not save is passed as a stand-in of its shape (zeros)
    where the op is linear in it, so no gradient depends on its value. `needs` mirrors
    `args`: a bool per tensor (ctx.needs_input_grad), a list of bools per list, False
    otherwise. Returns one entry per arg: the gradient (zeros where the output does not
    depend on it), a list of them (None where not needed), or None.
    """
    wrt: List[torch.Tensor] = []

    def stand_in(t: torch.Tensor) -> torch.Tensor:
        # A view per position: an input passed twice gets the gradient of each position
        # (autograd adds them up), and the graph still leads back to the input itself.
        alias = t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
        wrt.append(alias)
        return alias

    with torch.enable_grad():
        call = []
        for arg, need in zip(args, needs):
            if isinstance(arg, torch.Tensor):
                call.append(stand_in(arg) if need else arg)
            elif isinstance(arg, (list, tuple)) and isinstance(need, (list, tuple)):
                call.append([stand_in(t) if n else t for t, n in zip(arg, need)])
            else:
                call.append(arg)
        out = reference(*call)
        if wrt and out.requires_grad:
            grads = torch.autograd.grad(out, wrt, grad_out, create_graph=True, allow_unused=True)
        else:
            grads = [None] * len(wrt)
    grads = iter([torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)])
    result = []
    for arg, need in zip(args, needs):
        if isinstance(arg, torch.Tensor):
            result.append(next(grads) if need else None)
        elif isinstance(arg, (list, tuple)) and isinstance(need, (list, tuple)):
            result.append([next(grads) if n else None for n in need])
        else:
            result.append(None)
    return result


def by_need(grads: Iterable[torch.Tensor], needs: Sequence[bool]) -> List[Optional[torch.Tensor]]:
    """The kernels return the requested gradients only, in order; autograd wants one entry per
    input, None where none was requested."""
    it = iter(grads)
    return [next(it) if need else None for need in needs]
