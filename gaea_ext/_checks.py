"""Argument validation shared by the public functions: clear exceptions naming the
argument, raised before any kernel runs (so nothing is half-modified), the same on every
backend: TypeError for an argument of the wrong type or dtype, ValueError for a wrong shape,
length, value, layout or device. (The kernels' own TORCH_CHECKs, which would surface as
RuntimeError, are never the first to see a bad argument.)"""
from numbers import Real
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .reference import OUTPUT_KINDS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ORDERS = ("clamp_then_normalize", "normalize_then_clamp")


def check_input_list(inputs, op: str, one_dtype: bool = True, batched: bool = False) -> List[torch.Tensor]:
    """Validate the `inputs` of a weighted sum (`op`): a non-empty sequence of floating tensors
    of one shape, device and (with `one_dtype`) dtype, at least 1-D [N, ...] when `batched`;
    return it as a list."""
    if isinstance(inputs, torch.Tensor):
        raise TypeError(f"{op}: 'inputs' must be a sequence of tensors, not a tensor (use list(t) to split one)")
    try:
        inputs = list(inputs)
    except TypeError:
        raise TypeError(f"{op}: 'inputs' must be a sequence of tensors, got {type(inputs).__name__}") from None
    if not inputs:
        raise ValueError(f"{op}: 'inputs' must hold at least one tensor, got an empty sequence")
    first = inputs[0]
    for k, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: 'inputs[{k}]' must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: 'inputs' must be float16, bfloat16, float32 or float64, got {t.dtype} at inputs[{k}]")
        if one_dtype and t.dtype != first.dtype:
            raise TypeError(f"{op}: 'inputs' must share one dtype; inputs[0] is {first.dtype}, inputs[{k}] is {t.dtype}")
        if t.shape != first.shape:
            raise ValueError(
                f"{op}: 'inputs' must share one shape; inputs[0] is {tuple(first.shape)}, inputs[{k}] is {tuple(t.shape)}"
            )
        if t.device != first.device:
            raise ValueError(f"{op}: 'inputs' must share one device; inputs[0] is on {first.device}, inputs[{k}] on {t.device}")
    if batched and first.dim() == 0:
        raise ValueError(f"{op}: 'inputs' must have a batch dimension ([N, ...]), got 0-d tensors")
    return inputs


def check_weighted_sum(inputs, weights) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Validate weighted_sum arguments; return (inputs as a list, weights as 1-D)."""
    inputs = check_input_list(inputs, "weighted_sum")
    first = inputs[0]
    weights = check_weights(weights, "weighted_sum", len(inputs), "one element per input", first.device,
                            "the inputs' device", rows=False)
    return inputs, weights


def check_sample_weighted_sum(inputs, weights) -> List[torch.Tensor]:
    """Validate sample_weighted_sum arguments: the inputs as weighted_sum's, with a batch
    dimension; weights a floating [K, N] tensor on their device. Return the inputs as a list."""
    op = "sample_weighted_sum"
    inputs = check_input_list(inputs, op, batched=True)
    first = inputs[0]
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{op}: 'weights' must be a [K, N] tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{op}: 'weights' must be a floating-point tensor, got {weights.dtype}")
    want = (len(inputs), first.shape[0])
    if tuple(weights.shape) != want:
        raise ValueError(f"{op}: 'weights' must be [K, N] = {list(want)} (one row per input, one column per "
                         f"sample), got shape {tuple(weights.shape)}")
    if weights.device != first.device:
        raise ValueError(f"{op}: 'weights' must be on the inputs' device {first.device}, got {weights.device}")
    return inputs


def check_drop_path(inputs, drop_prob, drop) -> Tuple[List[torch.Tensor], Union[float, torch.Tensor], List[bool]]:
    """Validate drop_path_sum arguments: the inputs (one shape and device; dtypes may differ,
    they are promoted as `+` would), drop_prob a number in [0, 1) or a 0-d floating tensor on
    the inputs' device (its value is not read: that would synchronise a GPU and make
    torch.compile specialise on it), drop None or one bool per input. Return (inputs as a
    list, drop_prob as a float or the tensor, drop as a list)."""
    op = "drop_path_sum"
    inputs = check_input_list(inputs, op, one_dtype=False, batched=True)
    if isinstance(drop_prob, torch.Tensor):
        if drop_prob.dim() != 0 or not drop_prob.is_floating_point():
            raise TypeError(f"{op}: 'drop_prob' must be a number or a 0-d floating tensor, got a "
                            f"{drop_prob.dim()}-d {drop_prob.dtype} tensor")
        if drop_prob.device != inputs[0].device:
            raise ValueError(f"{op}: 'drop_prob' must be on the inputs' device {inputs[0].device}, "
                             f"got {drop_prob.device}")
    elif isinstance(drop_prob, bool) or not isinstance(drop_prob, Real):
        raise TypeError(f"{op}: 'drop_prob' must be a number or a 0-d floating tensor, got {type(drop_prob).__name__}")
    elif not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"{op}: 'drop_prob' must be in [0, 1), got {drop_prob!r}")
    else:
        drop_prob = float(drop_prob)
    if drop is None:
        return inputs, drop_prob, [True] * len(inputs)
    try:
        drop = list(drop)
    except TypeError:
        raise TypeError(f"{op}: 'drop' must be None or a sequence of bools, got {type(drop).__name__}") from None
    if len(drop) != len(inputs):
        raise ValueError(f"{op}: 'drop' must have one flag per input ({len(inputs)}), got {len(drop)}")
    for k, flag in enumerate(drop):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: 'drop[{k}]' must be a bool, got {type(flag).__name__}")
    return inputs, drop_prob, drop


def check_weights(weights, op: str, count: int, what: str, device: torch.device, device_name: str,
                  rows: bool) -> torch.Tensor:
    """The weights as a 1-D tensor of `count` elements. Accepted: a 1-D tensor, a `[1, count]`
    row (as `F.softmax(alpha, dim=-1)` of a one-row alpha gives), or a list/tuple of 0-d (or
    1-element) tensors, which are stacked (gradients flow back to each); with `rows`, any 2-D
    tensor of `count` elements (`[edges, ops]`) too."""
    shape_hint = "1-D (or [edges, ops])" if rows else "1-D (or a [1, K] row)"
    if isinstance(weights, (list, tuple)):
        if not weights:
            raise ValueError(f"{op}: 'weights' must have {what} ({count}), got an empty {type(weights).__name__}")
        for k, t in enumerate(weights):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: 'weights' must be a tensor or a sequence of 0-d tensors; 'weights[{k}]' "
                                f"is {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{op}: 'weights[{k}]' must be a floating-point tensor, got {t.dtype}")
            if t.numel() != 1:
                raise ValueError(f"{op}: 'weights[{k}]' must be a 0-d (or 1-element) tensor, got shape "
                                 f"{tuple(t.shape)}")
            if t.dtype != weights[0].dtype:
                raise TypeError(f"{op}: 'weights' must share one dtype; weights[0] is {weights[0].dtype}, "
                                f"weights[{k}] is {t.dtype}")
            if t.device != device:
                raise ValueError(f"{op}: 'weights[{k}]' must be on {device_name} {device}, got {t.device}")
        if len(weights) != count:
            raise ValueError(f"{op}: 'weights' must have {what} ({count}), got {len(weights)}")
        return torch.stack([t.reshape(()) for t in weights])
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{op}: 'weights' must be a tensor (or a sequence of 0-d tensors), got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{op}: 'weights' must be a floating-point tensor, got {weights.dtype}")
    if weights.dim() == 2 and (rows or weights.shape[0] == 1):
        flat = weights.reshape(-1)
    elif weights.dim() == 1:
        flat = weights
    else:
        raise ValueError(f"{op}: 'weights' must be {shape_hint}, got shape {tuple(weights.shape)}")
    if flat.shape[0] != count:
        raise ValueError(f"{op}: 'weights' must have {what} ({count}), got {flat.shape[0]} "
                         f"(shape {tuple(weights.shape)}; {shape_hint} is accepted)")
    if weights.device != device:
        raise ValueError(f"{op}: 'weights' must be on {device_name} {device}, got {weights.device}")
    return flat


def _int_list(value, op: str, name: str) -> List[int]:
    """`value` as a list of ints (bools and other types refused with TypeError)."""
    try:
        value = list(value)
    except TypeError:
        raise TypeError(f"{op}: '{name}' must be a sequence of ints, got {type(value).__name__}") from None
    for k, v in enumerate(value):
        if isinstance(v, bool) or not (isinstance(v, (int, torch.SymInt)) or _is_integer_scalar(v)):
            raise TypeError(f"{op}: '{name}[{k}]' must be an int, got {type(v).__name__}")
    return [int(v) for v in value]


def _is_integer_scalar(v) -> bool:
    """A 0-d integer tensor or a NumPy integer also counts as an int."""
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool
    return type(v).__module__ == "numpy" and getattr(getattr(v, "dtype", None), "kind", None) in ("i", "u")


def _tensor_list(value, op: str, name: str, labels: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
    """`value` as a list of tensors; `labels[k]` names element k in messages (default name[k])."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: '{name}' must be a sequence of tensors, not a tensor")
    try:
        value = list(value)
    except TypeError:
        raise TypeError(f"{op}: '{name}' must be a sequence of tensors, got {type(value).__name__}") from None
    for k, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            label = labels[k] if labels is not None and k < len(labels) else f"{name}[{k}]"
            raise TypeError(f"{op}: '{label}' must be a tensor, got {type(t).__name__}")
    return value


# Op names of DARTS-style search spaces that are not kinds, and what to use instead.
_KIND_HINTS = {
    "skip_connect": "use 'skip' for the identity (a stride-2 skip_connect is FactorizedReduce, a module: "
                    "its output goes in as a 'tensor' term)",
    "identity": "use 'skip'",
    "zero": "use 'none'",
    "noise": "a module op: its output goes in as a 'tensor' term",
}
MODULE_HINT = ("ops with parameters (DARTS' 'sep_conv_3x3', 'dil_conv_5x5', 'conv_7x1_1x7', ...) run as "
               "modules: pass their outputs in 'outputs' and give them the kind 'tensor'")


def check_kinds(kinds, kind_names: Sequence[str], op: str, where: str = "") -> List[str]:
    """Validate a sequence of kind names (before anything else of the call); return it as a
    list. `where` prefixes the argument in messages (e.g. "edges[1] ")."""
    if isinstance(kinds, str):
        raise TypeError(f"{op}: {where}'kinds' must be a sequence of kind names, not a string "
                        f"(write [{kinds!r}] for one term)")
    try:
        kinds = list(kinds)
    except TypeError:
        raise TypeError(f"{op}: {where}'kinds' must be a sequence of kind names, got {type(kinds).__name__}") from None
    for t, k in enumerate(kinds):
        if not isinstance(k, str):
            raise TypeError(f"{op}: {where}'kinds[{t}]' must be a kind name (str), got {type(k).__name__}")
        if k not in kind_names:
            hint = _KIND_HINTS.get(k.lower(), MODULE_HINT)
            raise ValueError(f"{op}: {where}'kinds[{t}]' is {k!r}, an unknown kind; the kinds are "
                             f"{', '.join(map(repr, kind_names))}. Hint: {hint}")
    return kinds


def check_mixed_node(xs, outputs, weights, kinds, sources, kind_names: Sequence[str], op: str = "mixed_terms",
                     x_labels: Optional[Sequence[str]] = None, output_labels: Optional[Sequence[str]] = None):
    """Validate mixed_terms arguments (for `op`, the function the user called: mixed_terms,
    mixed_op or mixed_node); return (xs, outputs, weights as 1-D, kinds as names, sources).
    `x_labels[k]` / `output_labels[k]` name xs[k] / outputs[k] as that function's caller
    knows them (default 'xs[k]', 'outputs[k]')."""
    kinds = check_kinds(kinds, kind_names, op)
    xs = _tensor_list(xs, op, "xs", x_labels)
    outputs = _tensor_list(outputs, op, "outputs", output_labels)
    if not xs:
        raise ValueError(f"{op}: 'xs' must hold at least one tensor (the edge inputs), got none")
    labels = {"xs": list(x_labels) if x_labels is not None else [f"xs[{k}]" for k in range(len(xs))],
              "outputs": (list(output_labels) if output_labels is not None
                          else [f"outputs[{k}]" for k in range(len(outputs))])}
    x0 = labels["xs"][0]
    first = xs[0]
    if first.dim() != 4:
        raise ValueError(f"{op}: '{x0}' must be 4-D [N, C, H, W], got shape {tuple(first.shape)}")
    if first.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: '{x0}' must be float16, bfloat16, float32 or float64, got {first.dtype}")
    for name, group in (("xs", xs), ("outputs", outputs)):
        for k, t in enumerate(group):
            label = labels[name][k]
            if t.shape != first.shape:
                raise ValueError(f"{op}: '{label}' must have {x0}'s shape {tuple(first.shape)}, got {tuple(t.shape)}")
            if t.dtype != first.dtype:
                raise TypeError(f"{op}: '{label}' must have {x0}'s dtype {first.dtype}, got {t.dtype}")
            if t.device != first.device:
                raise ValueError(f"{op}: '{label}' must be on {x0}'s device {first.device}, got {t.device}")
    if not kinds:
        raise ValueError(f"{op}: 'kinds' must hold at least one term, got none")
    sources = _int_list(sources, op, "sources")
    if len(sources) != len(kinds):
        raise ValueError(f"{op}: 'sources' must have one entry per term ({len(kinds)}), got {len(sources)}")
    uses = [0] * len(outputs)
    for t, (k, s) in enumerate(zip(kinds, sources)):
        pool = outputs if k in OUTPUT_KINDS else xs
        if k not in ("none", "ones") and not 0 <= s < len(pool):
            which = "outputs" if k in OUTPUT_KINDS else "xs"
            raise ValueError(f"{op}: 'sources[{t}]' must index '{which}' (0..{len(pool) - 1}), got {s}")
        if k in OUTPUT_KINDS:
            uses[s] += 1
    for k, n in enumerate(uses):
        if n != 1:
            raise ValueError(f"{op}: '{labels['outputs'][k]}' must be used by exactly one 'tensor' or 'tensor_bn' "
                             f"term, it is used by {n}")
    weights = check_weights(weights, op, len(kinds), "one element per term", first.device, f"{x0}'s device",
                            rows=True)
    return xs, outputs, weights, kinds, sources


def _is_batch_norm(value) -> bool:
    return isinstance(value, torch.nn.modules.batchnorm._BatchNorm)


def _is_empty(norms) -> bool:
    if norms is None:
        return True
    if isinstance(norms, torch.Tensor):
        return norms.numel() == 0
    if _is_batch_norm(norms):
        return False
    try:
        return len(norms) == 0
    except TypeError:
        return False


def check_norms(norms, kinds: Sequence[str], bn_kinds: Sequence[str], x: torch.Tensor, op: str = "mixed_terms",
                x_label: str = "xs[0]") -> Optional[list]:
    """Validate the norms of the BN terms: per BN term (in term order) a `[2, C]` tensor (mean,
    1/std per channel) or the term's BatchNorm module (affine=False, C features); a `[B, 2, C]`
    tensor also stands for B tensors. Return them as a list (None when no term is a BN kind).
    Nothing is computed, and no module's running statistics change, before all are checked."""
    num_bn = sum(k in bn_kinds for k in kinds)
    if num_bn == 0:
        if not _is_empty(norms):
            raise ValueError(f"{op}: 'norms' must be empty when no term is a BN kind ({', '.join(bn_kinds)})")
        return None
    if norms is None:
        raise ValueError(f"{op}: 'norms' (one BatchNorm2d(affine=False) module, or one [2, C] tensor of mean and "
                         f"1/std, per BN term) is required by the {num_bn} BN terms")
    if _is_batch_norm(norms):
        norms = [norms]
    if isinstance(norms, torch.Tensor):
        if norms.dim() != 3:
            raise TypeError(f"{op}: 'norms' must be a sequence with one entry per BN term (or a [B, 2, C] tensor), "
                            f"not a tensor of shape {tuple(norms.shape)}")
        norms = list(norms.unbind(0))
    try:
        norms = list(norms)
    except TypeError:
        raise TypeError(f"{op}: 'norms' must be a sequence of [2, C] tensors or BatchNorm2d modules, "
                        f"got {type(norms).__name__}") from None
    if len(norms) != num_bn:
        raise ValueError(f"{op}: 'norms' must hold one tensor per BN term ({num_bn}; a [2, C] tensor or the "
                         f"term's BatchNorm module), got {len(norms)}")
    C = x.shape[1]
    for k, n in enumerate(norms):
        if _is_batch_norm(n):
            if n.affine:
                raise ValueError(f"{op}: 'norms[{k}]' is a {type(n).__name__} with affine=True; the BN kinds take "
                                 f"only the mean and 1/std (the DARTS search pools' BatchNorm has affine=False): "
                                 f"run an affine BN as a module and pass its output as a 'tensor' term")
            if n.num_features != C:
                raise ValueError(f"{op}: 'norms[{k}]' is a {type(n).__name__} of {n.num_features} features, "
                                 f"but {x_label} has {C} channels")
            buffer = n.running_mean
            if buffer is not None and buffer.device != x.device:
                raise ValueError(f"{op}: 'norms[{k}]' ({type(n).__name__}) must be on {x_label}'s device "
                                 f"{x.device}, its running statistics are on {buffer.device}")
            continue
        if isinstance(n, torch.nn.Module) or not isinstance(n, torch.Tensor):
            raise TypeError(f"{op}: 'norms[{k}]' must be a [2, C] tensor or a BatchNorm2d(affine=False) module, "
                            f"got {type(n).__name__}")
        if tuple(n.shape) != (2, C):
            raise ValueError(f"{op}: 'norms[{k}]' must have shape (2, {C}) (mean, 1/std per channel), got {tuple(n.shape)}")
        if not n.is_floating_point():
            raise TypeError(f"{op}: 'norms[{k}]' must be floating point, got {n.dtype}")
        if n.device != x.device:
            raise ValueError(f"{op}: 'norms[{k}]' must be on {x_label}'s device {x.device}, got {n.device}")
    return norms


def check_partial_channel_node(mixed, states, weights, strides, groups):
    """Validate partial_channel_node arguments; return (states as a list, strides as ints)."""
    op = "partial_channel_node"
    if not isinstance(mixed, torch.Tensor):
        raise TypeError(f"{op}: 'mixed' must be a tensor, got {type(mixed).__name__}")
    if mixed.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: 'mixed' must be float16, bfloat16, float32 or float64, got {mixed.dtype}")
    if mixed.dim() != 4:
        raise ValueError(f"{op}: 'mixed' must be 4-D [N, C/groups, Ho, Wo] (groups = PC-DARTS' K), "
                         f"got shape {tuple(mixed.shape)}")
    states = _tensor_list(states, op, "states")
    if not states:
        raise ValueError(f"{op}: 'states' must hold at least one tensor")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{op}: 'groups' (PC-DARTS' K: the ops see C/K channels) must be an int, "
                        f"got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"{op}: 'groups' (PC-DARTS' K: the ops see C/K channels) must be a positive int, "
                         f"got {groups}")
    strides = _int_list(strides, op, "strides")
    if len(strides) != len(states) or any(s not in (1, 2) for s in strides):
        raise ValueError(f"{op}: 'strides' must hold 1 or 2 per state ({len(states)}), got {strides}")
    N, q, Ho, Wo = mixed.shape
    for e, (s, st) in enumerate(zip(states, strides)):
        if s.dim() != 4 or s.shape[0] != N or s.shape[1] != q * groups:
            raise ValueError(f"{op}: 'states[{e}]' must be [{N}, {q * groups}, H, W]: C = groups x mixed's "
                             f"channels ({groups} x {q}), groups being PC-DARTS' K (mixed holds the C/K channels "
                             f"the ops saw), got {tuple(s.shape)}")
        if s.dtype != mixed.dtype:
            raise TypeError(f"{op}: 'states[{e}]' must have mixed's dtype {mixed.dtype}, got {s.dtype}")
        if s.device != mixed.device:
            raise ValueError(f"{op}: 'states[{e}]' must be on mixed's device {mixed.device}, got {s.device}")
        if (s.shape[2] // st, s.shape[3] // st) != (Ho, Wo):
            raise ValueError(f"{op}: 'states[{e}]' with stride {st} gives a {s.shape[2] // st}x{s.shape[3] // st} "
                             f"tail, but mixed is {Ho}x{Wo}")
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{op}: 'weights' must be a tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"{op}: 'weights' must be a floating-point tensor, got {weights.dtype}")
    if weights.shape != (len(states),):
        raise ValueError(f"{op}: 'weights' must be 1-D with one element per state ({len(states)}), "
                         f"got shape {tuple(weights.shape)}")
    if weights.device != mixed.device:
        raise ValueError(f"{op}: 'weights' must be on mixed's device {mixed.device}, got {weights.device}")
    return states, strides


def _check_4d_float(op: str, x) -> None:
    """x must be a 4-D [N, C, H, W] floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: 'x' must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: 'x' must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: 'x' must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_pool_stats(x, kind: str, pool_kinds: Sequence[str]) -> None:
    """Validate pool_stats arguments."""
    op = "pool_stats"
    _check_4d_float(op, x)
    if not isinstance(kind, str):
        raise TypeError(f"{op}: 'kind' must be a kind name (str), got {type(kind).__name__}")
    if kind not in pool_kinds:
        raise ValueError(f"{op}: 'kind' must be one of {tuple(pool_kinds)}, got {kind!r}")


def check_tensor_batch_norm(x, bns) -> list:
    """Validate tensor_batch_norm arguments; return the BatchNorm modules as a list."""
    op = "tensor_batch_norm"
    _check_4d_float(op, x)
    if _is_batch_norm(bns):
        bns = [bns]
    elif isinstance(bns, torch.nn.Module) or isinstance(bns, torch.Tensor):
        raise TypeError(f"{op}: 'bns' must be a BatchNorm2d module or a sequence of them, got {type(bns).__name__}")
    else:
        try:
            bns = list(bns)
        except TypeError:
            raise TypeError(f"{op}: 'bns' must be a BatchNorm2d module or a sequence of them, "
                            f"got {type(bns).__name__}") from None
    if not bns:
        raise ValueError(f"{op}: 'bns' must hold at least one BatchNorm2d module")
    for k, bn in enumerate(bns):
        if not _is_batch_norm(bn):
            raise TypeError(f"{op}: 'bns[{k}]' must be a BatchNorm2d module, got {type(bn).__name__}")
        if bn.affine:
            raise ValueError(f"{op}: 'bns[{k}]' must have affine=False (the norm holds only the mean and 1/std)")
        if bn.running_mean is not None and bn.running_mean.device != x.device:
            raise ValueError(f"{op}: 'bns[{k}]' must be on x's device {x.device}, its running statistics are on "
                             f"{bn.running_mean.device}")
    features = [bn.num_features for bn in bns]
    if sum(features) != x.shape[1]:
        raise ValueError(f"{op}: the num_features of 'bns' ({' + '.join(map(str, features))} = {sum(features)}) "
                         f"must sum to x's {x.shape[1]} channels")
    batch_stats = [bn.training or bn.running_mean is None for bn in bns]
    if any(b != batch_stats[0] for b in batch_stats):
        k = batch_stats.index(not batch_stats[0])
        def mode(i):
            return "batch statistics (training mode)" if batch_stats[i] else "running statistics (eval mode)"
        raise ValueError(f"{op}: 'bns' must all normalise in one mode, but bns[0] uses {mode(0)} and bns[{k}] "
                         f"{mode(k)}")
    if bns[0].training and x.numel() == x.shape[1]:
        raise ValueError(f"{op}: 'x' of shape {tuple(x.shape)} has one value per channel; BatchNorm in training mode "
                         f"needs more")
    return bns


_INF = float("inf")


def check_lr(lr, name: str = "lr") -> float:
    if type(lr) is float or type(lr) is int:  # fast path; isinstance(x, Real) is slow
        if 0.0 <= lr < _INF:
            return float(lr)
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"exp_grad_step_: '{name}' must be a number, got a tensor of shape {tuple(lr.shape)}")
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, Real):
        raise TypeError(f"exp_grad_step_: '{name}' must be a number, got {type(lr).__name__}")
    lr = float(lr)
    if not (lr >= 0.0) or lr == float("inf"):
        raise ValueError(f"exp_grad_step_: '{name}' must be a finite number >= 0, got {lr}")
    return lr


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"exp_grad_step_: '{name}' must be a number, got {type(value).__name__}")
    return float(value)


def check_min_value(min_value) -> float:
    if (type(min_value) is float or type(min_value) is int) and 0.0 <= min_value < 1.0:
        return float(min_value)
    value = _check_number(min_value, "min_value")
    if not (0.0 <= value < 1.0):
        raise ValueError(f"exp_grad_step_: 'min_value' must be a number in [0, 1), got {min_value!r}")
    return value


def check_entropic_reg(entropic_reg) -> float:
    if (type(entropic_reg) is float or type(entropic_reg) is int) and 0.0 <= entropic_reg < _INF:
        return float(entropic_reg)
    value = _check_number(entropic_reg, "entropic_reg")
    if not (0.0 <= value < _INF):
        raise ValueError(f"exp_grad_step_: 'entropic_reg' must be a finite number >= 0, got {entropic_reg!r}")
    return value


def check_order(order, orders: Sequence[str] = ORDERS) -> str:
    if not isinstance(order, str):
        raise TypeError(f"exp_grad_step_: 'order' must be a string, one of {tuple(orders)}, got {type(order).__name__}")
    if order not in orders:
        raise ValueError(f"exp_grad_step_: 'order' must be one of {tuple(orders)}, got {order!r}")
    return order


def check_segments(segments) -> List[int]:
    """Validate one segment list; return it as a list of ints (empty = the whole row)."""
    if segments is None:
        return []
    if isinstance(segments, torch.Tensor):
        segments = segments.tolist()
    try:
        segments = list(segments)
    except TypeError:
        raise TypeError(f"exp_grad_step_: 'segments' must be a sequence of ints, got {type(segments).__name__}") from None
    if not segments:
        raise ValueError("exp_grad_step_: 'segments' must be None or a non-empty sequence of lengths")
    for s in segments:
        if type(s) is not int:
            raise TypeError(f"exp_grad_step_: 'segments' must hold ints, got {segments}")
        if s <= 0:
            raise ValueError(f"exp_grad_step_: 'segments' must hold positive lengths, got {segments}")
    return segments


def check_exp_grad_options(segments, min_value, order, entropic_reg) -> List[int]:
    """Validate one set of EG options; return segments as a list (empty = whole row)."""
    check_order(order)
    check_min_value(min_value)
    check_entropic_reg(entropic_reg)
    return check_segments(segments)


def per_param(value, count: int, name: str) -> list:
    """One value for every param, or a sequence with one value per param."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"exp_grad_step_: '{name}' must be one number or one per param ({count}), got {len(value)}")
        return list(value)
    return [value] * count


def per_param_segments(segments, count: int) -> List[List[int]]:
    """`segments` as one list of lengths per param: None, one shared list of ints, or one
    entry (None or a list of ints) per param."""
    if segments is None:
        return [[] for _ in range(count)]
    if isinstance(segments, (list, tuple)) and segments and all(s is None or isinstance(s, (list, tuple)) for s in segments):
        if len(segments) != count:
            raise ValueError(f"exp_grad_step_: 'segments' per param must have one entry per param ({count}), got {len(segments)}")
        return [check_segments(s) for s in segments]
    shared = check_segments(segments)
    return [shared for _ in range(count)]


def check_param_and_grad(param, grad, segments: Sequence[int], index: Optional[int] = None) -> None:
    """Metadata checks of one (param, grad) pair; no device values are read."""
    if (
        type(param) is torch.nn.Parameter or type(param) is torch.Tensor
    ) and type(grad) is torch.Tensor and param.dtype in FLOAT_DTYPES and grad.is_floating_point() \
            and param.dim() >= 1 and grad.shape == param.shape and grad.device == param.device \
            and param.is_contiguous() and (not segments or sum(segments) == param.shape[-1]):
        return  # the common case, checked cheaply; below, the same checks with messages
    where = "" if index is None else f"[{index}]"
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"exp_grad_step_: 'param{where}' must be a tensor, got {type(param).__name__}")
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"exp_grad_step_: 'grad{where}' must be a tensor, got {type(grad).__name__}")
    if param.dtype not in FLOAT_DTYPES:
        raise TypeError(f"exp_grad_step_: 'param{where}' must be a floating-point tensor, got {param.dtype}")
    if not grad.is_floating_point():
        raise TypeError(f"exp_grad_step_: 'grad{where}' must be a floating-point tensor, got {grad.dtype}")
    if param.dim() < 1:
        raise ValueError(f"exp_grad_step_: 'param{where}' must have at least one dimension (rows are the last), got a 0-d tensor")
    if grad.shape != param.shape:
        raise ValueError(f"exp_grad_step_: 'grad{where}' must have the param's shape {tuple(param.shape)}, got {tuple(grad.shape)}")
    if grad.device != param.device:
        raise ValueError(f"exp_grad_step_: 'grad{where}' must be on the param's device {param.device}, got {grad.device}")
    if not param.is_contiguous():
        raise ValueError(f"exp_grad_step_: 'param{where}' must be contiguous (it is updated in place)")
    if segments and sum(segments) != param.shape[-1]:
        raise ValueError(
            f"exp_grad_step_: 'segments' must sum to the last dimension of param{where} ({param.shape[-1]}), "
            f"got {list(segments)} (sum {sum(segments)})"
        )
