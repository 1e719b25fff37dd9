"""What the ops' backward functions (registered with torch.library.register_autograd) share."""
from typing import Iterable, List, Optional, Sequence

import torch


def refuse_double_backward(op: str) -> None:
    """Raise RuntimeError naming `op` when its backward runs with create_graph=True (grad mode
    is on inside a backward exactly then): the backward kernels are not differentiable, and a
    second-order gradient through them would silently be zero."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"gaea_ext.{op}: double backward (create_graph=True) is not supported")


def by_need(grads: Iterable[torch.Tensor], needs: Sequence[bool]) -> List[Optional[torch.Tensor]]:
    """The kernels return the requested gradients only, in order; autograd wants one entry per
    input, None where none was requested."""
    it = iter(grads)
    return [next(it) if need else None for need in needs]
