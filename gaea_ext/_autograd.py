"""What the ops' backward functions (registered with torch.library.register_autograd) share."""
from typing import Callable, Iterable, List, Optional, Sequence

import torch

from ._layout import memory_format_of


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


def register_weighted_sum_autograd(op: str, reference: Callable, backward_op) -> None:
    """Register the autograd of a weighted-sum op `op(Tensor[] inputs, Tensor weights)` (linear
    in each input), e.g. "gaea_ext::weighted_sum", whose kernel backward is
    `backward_op(grad_out, inputs, weights, inputs_need_grad, weights_need_grad)` -> (the
    requested input gradients, grad_weights). `reference` is the op's pure-PyTorch reference,
    differentiated for a backward with create_graph=True (reference_grads)."""

    def setup_context(ctx, inputs, output):
        ys, weights = inputs
        # Only what the backward reads is kept alive: the inputs for grad_weights (none when
        # the weights need no gradient), the weights for grad_inputs.
        ctx.num_inputs = len(ys)
        ctx.input_format = memory_format_of(ys[0])
        ctx.save_for_backward(weights, *(ys if weights.requires_grad else ()))

    def backward(ctx, grad_out):
        inputs_need_grad, weights_need_grad = ctx.needs_input_grad
        weights, *ys = ctx.saved_tensors
        if double_backward_enabled():
            # The output is linear in each input: unsaved inputs are stood in for by zeros.
            ys = ys or [torch.zeros_like(grad_out) for _ in range(ctx.num_inputs)]
            return tuple(reference_grads(reference, (list(ys), weights),
                                         (list(inputs_need_grad), weights_need_grad), grad_out))
        if not ys:  # inputs were not saved; the kernel only reads their metadata
            if ctx.input_format == torch.channels_last:
                # Channels_last inputs get channels_last gradients, even from a gradient in
                # another layout (a channel slice of a concatenation's gradient): one copy here.
                grad_out = grad_out.contiguous(memory_format=torch.channels_last)
            ys = [grad_out] * ctx.num_inputs
        grad_list, grad_weights = backward_op(grad_out, list(ys), weights, list(inputs_need_grad),
                                              bool(weights_need_grad))
        return by_need(grad_list, inputs_need_grad), (grad_weights if weights_need_grad else None)

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def weighted_sum_backward_fake(empty_like_operands: Callable) -> Callable:
    """The fake (meta) kernel of a weighted-sum op's backward (see register_weighted_sum_autograd):
    one gradient per needed input, laid out by `empty_like_operands(inputs + [grad_out])` (the
    op's layout rule), and grad_weights shaped like the weights (empty when not needed)."""

    def fake(grad_out, inputs, weights, inputs_need_grad, weights_need_grad):
        operands = list(inputs) + [grad_out]
        grad_inputs = [empty_like_operands(operands) for need in inputs_need_grad if need]
        grad_weights = weights.new_empty(weights.shape if weights_need_grad else (0,))
        return grad_inputs, grad_weights

    return fake
