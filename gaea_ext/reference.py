"""Pure-PyTorch references of every gaea_ext op: what the kernels must compute. The tests
compare the kernels against them, and the ops fall back on them where no kernel serves a
call (no compiled kernels, or a call beyond the CUDA kernels' limits). The eager baselines
that the profiler times live in gaea_ext.baselines.
"""
import math
from typing import Optional, Sequence

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 for everything else (half types accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """out = sum_k weights[k] * inputs[k], accumulated in float32 for half types (autograd-able)."""
    dtype = inputs[0].dtype
    acc = accumulation_dtype(dtype)
    w = weights.to(acc)
    out = w[0] * inputs[0].to(acc)
    for k in range(1, len(inputs)):
        out = out + w[k] * inputs[k].to(acc)
    return out.to(dtype)


def sample_weighted_sum(inputs: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_k weights[k, n] * inputs[k][n] (weights [K, N]), accumulated in float32 for
    half types (autograd-able)."""
    dtype = inputs[0].dtype
    acc = accumulation_dtype(dtype)
    w = weights.to(acc).reshape(weights.shape + (1,) * (inputs[0].dim() - 1))
    out = w[0] * inputs[0].to(acc)
    for k in range(1, len(inputs)):
        out = out + w[k] * inputs[k].to(acc)
    return out.to(dtype)


MIXED_KINDS = ("none", "skip", "avg_pool_3x3", "max_pool_3x3", "tensor", "avg_pool_3x3_bn", "max_pool_3x3_bn",
               "ones", "tensor_bn")
# Kinds normalised by a [2, C] norm: the pools followed by BatchNorm (affine=False), and a
# precomputed output followed by one ("tensor_bn").
POOL_BN_KINDS = ("avg_pool_3x3_bn", "max_pool_3x3_bn")
BN_KINDS = POOL_BN_KINDS + ("tensor_bn",)
# Kinds whose term is one of `outputs` rather than computed from an x.
OUTPUT_KINDS = ("tensor", "tensor_bn")


def pool_3x3(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The stride-1, padding-1 3x3 pool of a pool kind (the average excludes padded cells);
    "tensor_bn"'s is the identity (its BatchNorm normalises the tensor itself)."""
    if kind == "tensor_bn":
        return x
    if kind.startswith("avg_pool_3x3"):
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)


def mixed_term(kind: str, x: Optional[torch.Tensor], y: Optional[torch.Tensor],
               norm: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """One term of a mixed node, materialised: the parameter-free op of `x`, or `y` itself.
    BN kinds normalise the pool (for "tensor_bn", `y`) per channel with `norm` = [mean, 1/std]
    (shape [2, C])."""
    if kind == "skip":
        return x
    if kind in ("avg_pool_3x3", "max_pool_3x3"):
        return pool_3x3(kind, x)
    if kind in BN_KINDS:
        source = y if kind == "tensor_bn" else x
        acc = accumulation_dtype(source.dtype)
        mean, rstd = norm.to(acc).reshape(2, 1, -1, 1, 1)
        return (pool_3x3(kind, source).to(acc) - mean) * rstd
    if kind == "tensor":
        return y
    if kind == "ones":
        return torch.ones_like(x)
    return None  # none


def mixed_node(xs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], weights: torch.Tensor,
               kinds: Sequence[str], sources: Sequence[int], norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = sum_t weights[t] * term_t with term_t = kinds[t] applied to xs[sources[t]]
    (parameter-free kinds), outputs[sources[t]] ("tensor", "tensor_bn") or ones ("ones"); BN
    term b normalises its pool (or output) with norm[b] = [mean, 1/std] per channel. Accumulated in float32 for
    half types (autograd-able). The pools are stride 1, padding 1; avg excludes padded cells."""
    dtype = xs[0].dtype
    acc = accumulation_dtype(dtype)
    w = weights.to(acc)
    out = torch.zeros_like(xs[0], dtype=acc)
    b = 0
    for t, (kind, src) in enumerate(zip(kinds, sources)):
        x = xs[src] if kind not in OUTPUT_KINDS + ("none", "ones") else xs[0]
        term_norm = None
        if kind in BN_KINDS:
            term_norm, b = norm[b], b + 1
        term = mixed_term(kind, x, outputs[src] if kind in OUTPUT_KINDS else None, term_norm)
        if term is not None:
            out = out + w[t] * term.to(acc)
    return out.to(dtype)


def pool_stats(x: torch.Tensor, kind: str) -> torch.Tensor:
    """[2, C]: the per-channel mean and biased variance over N, H, W of the 3x3 pool of `x`
    (of `x` itself for "tensor_bn"; float32, or float64 for float64 `x`); autograd-able."""
    p = pool_3x3(kind, x).to(accumulation_dtype(x.dtype))
    var, mean = torch.var_mean(p, dim=(0, 2, 3), correction=0)
    return torch.stack([mean, var])


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet/PC-DARTS channel shuffle: out[:, j * groups + g] = x[:, g * (C / groups) + j]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def partial_channel_node(mixed: torch.Tensor, states: Sequence[torch.Tensor], weights: torch.Tensor,
                         strides: Sequence[int], groups: int) -> torch.Tensor:
    """The PC-DARTS node: shuffle(cat([mixed, sum_e weights[e] * tail_e]), groups) with
    tail_e = states[e][:, q:] (2x2 max-pooled for stride 2), q = mixed's channels; the bypass
    is accumulated in float32 for half types (autograd-able)."""
    q = mixed.shape[1]
    acc = accumulation_dtype(mixed.dtype)
    w = weights.to(acc)
    bypass = None
    for e, (s, stride) in enumerate(zip(states, strides)):
        tail = s[:, q:]
        if tail.shape[1] == 0:  # groups == 1: no bypass channels
            tail = mixed.new_empty((mixed.shape[0], 0, *mixed.shape[2:]))
        elif stride == 2:
            tail = torch.nn.functional.max_pool2d(tail, 2, 2)
        term = w[e] * tail.to(acc)
        bypass = term if bypass is None else bypass + term
    return channel_shuffle(torch.cat([mixed, bypass.to(mixed.dtype)], dim=1), groups)


def exp_grad_step(
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
    """The EG step of docs/method.md 2.2-2.6 in the log domain, out of place.

    Per simplex of length k: l = log p - eta * (g + reg * (log(k p) + 1)); then either
    clamp l at log(min_value) and normalise (clamp_then_normalize), or normalise and clamp
    the probabilities (normalize_then_clamp). eta = lr, or lr / max|g| when adaptive.
    """
    acc = accumulation_dtype(param.dtype)
    p = param.to(acc)
    g = grad.to(acc)
    eta = lr
    if adaptive:
        max_abs = g.abs().max() if g.numel() else torch.zeros((), dtype=acc)
        eta = torch.where(max_abs > 0, lr / max_abs, torch.full_like(max_abs, lr))
    lengths = list(segments) if segments else [p.shape[-1]]
    pieces = []
    for p_seg, g_seg in zip(p.split(lengths, dim=-1), g.split(lengths, dim=-1)):
        k = p_seg.shape[-1]
        positive = p_seg > 0
        log_p = torch.where(positive, p_seg, torch.ones_like(p_seg)).log()
        drive = g_seg + entropic_reg * (math.log(k) + log_p + 1) if entropic_reg else g_seg
        logits = torch.where(positive, log_p - eta * drive, torch.full_like(p_seg, -math.inf))
        if order == "clamp_then_normalize":
            if min_value > 0:
                logits = logits.clamp(min=math.log(min_value))
            pieces.append(torch.softmax(logits, dim=-1))
        else:
            pieces.append(torch.softmax(logits, dim=-1).clamp(min=min_value))
    return torch.cat(pieces, dim=-1).to(param.dtype)
