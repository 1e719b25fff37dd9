"""drop_path_sum: the node of a discrete DARTS cell under drop path, `sum_k drop_path(inputs[k])`,
in one pass: the per-sample keep masks, scaled by 1 / (1 - p), are the weights of
gaea_ext.sample_weighted_sum, so no dropped tensor is ever materialised and (the masks
needing no gradient) no input is saved for the backward."""
from typing import Optional, Sequence, Union

import torch

from .._checks import check_drop_path
from ..reference import accumulation_dtype
from ..sample_weighted_sum import sample_weighted_sum


def drop_path_sum(inputs: Sequence[torch.Tensor], drop_prob: Union[float, torch.Tensor], training: bool = True,
                  generator: Optional[torch.Generator] = None, *,
                  drop: Optional[Sequence[bool]] = None) -> torch.Tensor:
    """Return `sum_k drop_path(inputs[k], drop_prob)` in one fused pass.

    In training with `drop_prob` > 0, one keep mask per input in `drop` (default: every input)
    is drawn, in input order, as `torch.empty(N, dtype=inputs[k].dtype).bernoulli_(1 - p,
    generator=generator)` (N = the batch, dimension 0), and the sum is
    `sample_weighted_sum(inputs, weights)` with `weights[k] = mask_k / (1 - p)` (float32, or
    float64 for float64 inputs) and ones for the inputs not in `drop` (DARTS leaves identity
    ops undropped). With the same generator state this equals the DARTS code's
    `drop_path(a, p) + drop_path(b, p)` (`x.div_(1 - p).mul_(mask)`, masks drawn in the same
    order; gaea_nas.spaces.darts.networks.drop_path) up to rounding: the fused sum rounds once.

    Out of training, with `drop_prob` == 0 or with no input to drop, it is the plain sum
    `inputs[0] + inputs[1] + ...` (`inputs[0]` itself when K == 1). Inputs share shape
    [N, ...] and device; differing dtypes are promoted as `+` would.

    `drop_prob` may also be a 0-d floating tensor on the inputs' device (float64 for the same
    masks and scales as the float): its value is never read on the host, so torch.compile does
    not specialise on it (a network changing it every epoch is not recompiled) and a GPU does
    not synchronise. The masks are then drawn even at a value of 0 (all kept), and its range
    is the caller's to keep in [0, 1).
    """
    inputs, drop_prob, drop = check_drop_path(inputs, drop_prob, drop)
    if not training or (not isinstance(drop_prob, torch.Tensor) and drop_prob == 0.0) or not any(drop):
        out = inputs[0]
        for t in inputs[1:]:
            out = out + t
        return out
    dtype = inputs[0].dtype
    for t in inputs[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    acc = accumulation_dtype(dtype)
    keep = 1.0 - drop_prob
    first = inputs[0]
    rows = []
    for t, dropped in zip(inputs, drop):
        if dropped:
            mask = torch.empty(first.shape[0], dtype=t.dtype, device=first.device).bernoulli_(keep, generator=generator)
            rows.append(mask.to(acc) / keep)
        else:
            rows.append(torch.ones(first.shape[0], dtype=acc, device=first.device))
    return sample_weighted_sum([t.to(dtype) for t in inputs], torch.stack(rows))
