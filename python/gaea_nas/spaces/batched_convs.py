"""Batched same-input convolutions: the ReLU-Conv-BN ops of the edges leaving one node all read
that node, so one ReLU and, per conv shape (kernel size, stride, padding, dilation), ONE
convolution over the edges' concatenated output channels replace one ReLU and one convolution
per op. The batched weight is ``torch.cat`` of the per-edge weights, built in the forward, so
each edge keeps its own parameter (``state_dict`` keys, checkpoints and derived networks are
unchanged) and receives exactly its gradient; the function is the same, only the convolution's
internal summation blocking may differ.

Each op's output is its channel block of the batched output (a view). Its BatchNorm is either
applied with the other edges' in one ``F.batch_norm`` over the batched output (the modules'
running statistics concatenated, then written back), or, with ``fold_bn``, left to the mixing kernel:
one ``gaea_ext.tensor_batch_norm`` pass over the batched output gives every edge's
``[2, C]`` mean / 1-std (and updates each module's running statistics), and the op's term is a
:class:`~gaea_nas.spaces.mixing.NormedTerm` of the slice and its columns of that norm.
"""
from typing import Dict, Hashable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import gaea_ext

from .depthwise_conv import depthwise_conv2d
from .mixing import NormedTerm, Term

__all__ = ["batched_relu_conv_bn", "batched_separable_stage", "is_relu_conv_bn", "is_separable_stage"]


def is_relu_conv_bn(op: nn.Module) -> bool:
    """Whether ``op`` is ``nn.Sequential(ReLU, Conv2d, BatchNorm2d)`` with a plain (not in-place)
    ReLU and a bias-free, ungrouped, zero-padded convolution: an op that can join a batch."""
    if not isinstance(op, nn.Sequential) or len(op) != 3:
        return False
    relu, conv, bn = op
    return (type(relu) is nn.ReLU and not relu.inplace and type(conv) is nn.Conv2d and conv.bias is None
            and conv.groups == 1 and conv.padding_mode == "zeros" and type(bn) is nn.BatchNorm2d)


def _conv_key(conv: nn.Conv2d) -> tuple:
    w = conv.weight
    return (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, w.dtype, w.device)


def batched_relu_conv_bn(x: torch.Tensor, ops: Sequence[Tuple[Hashable, nn.Module]],
                         fold_bn: bool = False) -> Dict[Hashable, Term]:
    """The outputs of the ReLU-Conv-BN ``ops`` (``[(key, op), ...]``, each passing
    :func:`is_relu_conv_bn`) on the same input ``x``: one ReLU, one convolution per conv shape.
    Returns ``{key: output}``; with ``fold_bn`` (every BatchNorm ``affine=False``) each output
    is a :class:`~gaea_nas.spaces.mixing.NormedTerm` instead of the normalised tensor."""
    groups: Dict[tuple, List[Tuple[Hashable, nn.Module]]] = {}
    for key, op in ops:
        if not is_relu_conv_bn(op):
            raise ValueError(f"batched_relu_conv_bn: op {key!r} is not a ReLU-Conv-BN sequence")
        groups.setdefault(_conv_key(op[1]), []).append((key, op))
    if not groups:
        return {}
    relu_x = torch.relu(x)
    out: Dict[Hashable, Term] = {}
    for members in groups.values():
        conv = members[0][1][1]
        weights = [op[1].weight for _, op in members]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        y = F.conv2d(relu_x, weight, None, conv.stride, conv.padding, conv.dilation)
        bns = [op[2] for _, op in members]
        sizes = [op[1].out_channels for _, op in members]
        parts = _channel_blocks(y, sizes)
        if fold_bn:
            norms = gaea_ext.tensor_batch_norm(y, bns).split(sizes, dim=1)
            out.update((key, NormedTerm(part, norm)) for (key, _), part, norm in zip(members, parts, norms))
        else:
            out.update(zip([key for key, _ in members], _channel_blocks(_batch_norm_blocks(y, bns), sizes)))
    return out


def _batch_norm_blocks(y: torch.Tensor, bns: List[nn.BatchNorm2d]) -> torch.Tensor:
    """``y`` with each consecutive channel block normalised by its BatchNorm module, exactly as
    the modules would (running statistics updated in training mode): one ``F.batch_norm`` over
    the concatenated statistics when the modules agree on their settings, else one call each."""
    first = bns[0]
    sizes = [bn.num_features for bn in bns]
    same = all(bn.training == first.training and bn.eps == first.eps and bn.momentum == first.momentum is not None
               and bn.affine == first.affine and bn.running_mean is not None for bn in bns)
    if len(bns) == 1 or not same:
        return torch.cat([bn(part) for bn, part in zip(bns, _channel_blocks(y, sizes))], 1)
    if first.training:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
    mean = torch.cat([bn.running_mean for bn in bns])
    var = torch.cat([bn.running_var for bn in bns])
    cat = (lambda name: torch.cat([getattr(bn, name) for bn in bns])) if first.affine else (lambda name: None)
    out = F.batch_norm(y, mean, var, cat("weight"), cat("bias"), first.training, first.momentum, first.eps)
    if first.training:
        with torch.no_grad():
            for bn, m, v in zip(bns, mean.split(sizes), var.split(sizes)):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
    return out


def _channel_blocks(y: torch.Tensor, sizes: List[int]):
    """``y``'s consecutive channel blocks of ``sizes``, as views. ``split`` (not indexing): its
    backward is one ``cat`` of the blocks' gradients, where slicing would allocate and zero a
    full-size gradient per block."""
    return y.split(sizes, dim=1) if len(sizes) > 1 else (y,)


def is_separable_stage(op: nn.Module) -> bool:
    """Whether ``op`` (or its ``.op``) is an ``nn.Sequential`` starting with a plain ReLU, a
    bias-free depthwise conv and a bias-free 1x1 conv (the DARTS SepConv / DilConv first stage)."""
    seq = op if isinstance(op, nn.Sequential) else getattr(op, "op", None)
    if not isinstance(seq, nn.Sequential) or len(seq) < 4:
        return False
    relu, dw, pw = seq[0], seq[1], seq[2]
    return (type(relu) is nn.ReLU and not relu.inplace and type(dw) is nn.Conv2d and type(pw) is nn.Conv2d
            and dw.bias is None and pw.bias is None and dw.groups == dw.in_channels == dw.out_channels
            and pw.groups == 1 and pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.padding == (0, 0)
            and dw.padding_mode == pw.padding_mode == "zeros")


def batched_separable_stage(x: torch.Tensor, ops: Sequence[Tuple[Hashable, nn.Module]],
                            fold_bn: bool = False) -> Dict[Hashable, Term]:
    """The outputs of the ``ops`` (each passing :func:`is_separable_stage`) on the same input
    ``x``, batched per op type: one ReLU; per depthwise-conv shape one depthwise conv over all
    the ops (one input copy per op, not saved) and one grouped 1x1 conv (a batched matmul on the
    CPU). What follows the first stage runs batched too when it is a BatchNorm (DilConv) or the
    SepConv second stage (BatchNorm, ReLU, depthwise, 1x1, BatchNorm): one ``F.batch_norm``,
    ReLU, depthwise and grouped 1x1 conv over all the ops' channels; other layers run per op on
    its channel slice. The depthwise convs use :func:`~gaea_nas.spaces.depthwise_conv.depthwise_conv2d` (its
    faster CPU backward). With ``fold_bn`` an op ending in ``BatchNorm2d(affine=False)`` gives
    a :class:`~gaea_nas.spaces.mixing.NormedTerm` of its output before that BatchNorm and the
    ``[2, C]`` norm of one ``gaea_ext.tensor_batch_norm`` pass for all the ops."""
    groups: Dict[tuple, List[Tuple[Hashable, nn.Sequential]]] = {}
    for key, op in ops:
        if not is_separable_stage(op):
            raise ValueError(f"batched_separable_stage: op {key!r} does not start with ReLU, depthwise and 1x1 convs")
        seq = op if isinstance(op, nn.Sequential) else op.op
        groups.setdefault(_conv_key(seq[1]) + (seq[2].out_channels, _tail_key(list(seq)[3:])), []).append((key, seq))
    if not groups:
        return {}
    relu_x = torch.relu(x)
    out: Dict[Hashable, Term] = {}
    for group_key, members in groups.items():
        tail_key = group_key[-1]
        dw = members[0][1][1]
        E = len(members)
        # one depthwise conv over E copies of the input: channel e * C + c is edge e's channel c
        h = depthwise_conv2d(relu_x, _cat([seq[1].weight for _, seq in members]), dw.stride, dw.padding,
                             dw.dilation, copies=E)
        y = _grouped_pointwise(h, [seq[2].weight for _, seq in members])
        sizes = [seq[2].out_channels for _, seq in members]
        tails = [list(seq)[3:] for _, seq in members]
        if tail_key is None:  # other layers: per op on its slice
            for (key, _), part, rest in zip(members, _channel_blocks(y, sizes), tails):
                fold = fold_bn and type(rest[-1]) is nn.BatchNorm2d and not rest[-1].affine
                for m in rest[:-1] if fold else rest:
                    part = m(part)
                out[key] = NormedTerm(part, rest[-1]) if fold else part
            continue
        if tail_key[0] == "sep":  # the SepConv second stage, batched
            h = torch.relu(_batch_norm_blocks(y, [t[0] for t in tails]))
            dw2 = tails[0][2]
            h = depthwise_conv2d(h, _cat([t[2].weight for t in tails]), dw2.stride, dw2.padding, dw2.dilation)
            y = _grouped_pointwise(h, [t[3].weight for t in tails])
            sizes = [t[3].out_channels for t in tails]
        bns = [t[-1] for t in tails]
        if fold_bn and not bns[0].affine and len({bn.training for bn in bns}) == 1:
            norms = gaea_ext.tensor_batch_norm(y, bns).split(sizes, dim=1)
            parts = _channel_blocks(y, sizes)
            out.update((key, NormedTerm(part, norm)) for (key, _), part, norm in zip(members, parts, norms))
        else:
            out.update(zip([key for key, _ in members], _channel_blocks(_batch_norm_blocks(y, bns), sizes)))
    return out


def _grouped_pointwise(h: torch.Tensor, weights: List[torch.Tensor]) -> torch.Tensor:
    """The 1x1 convs ``weights`` (``[C_out, C, 1, 1]`` each) of the consecutive C-channel blocks of
    ``h``, as one batched matmul over the blocks: ``F.conv2d(h, cat(weights), groups=E)`` on the
    CPU splits into one convolution and one input copy per group."""
    if len(weights) == 1 or h.device.type != "cpu":
        return F.conv2d(h, _cat(weights), None, 1, 0, 1, len(weights))
    E, (n, _, hh, ww) = len(weights), h.shape
    w = torch.stack(weights).flatten(2)  # [E, C_out, C]
    return torch.matmul(w, h.reshape(n, E, -1, hh * ww)).reshape(n, -1, hh, ww)


def _cat(weights: List[torch.Tensor]) -> torch.Tensor:
    return weights[0] if len(weights) == 1 else torch.cat(weights)


def _tail_key(rest: List[nn.Module]):
    """What follows a separable stage, as a key of the layers that can run batched: a lone
    ``BatchNorm2d`` (DilConv) or the SepConv second stage (BatchNorm2d, ReLU, stride-1 bias-free
    depthwise conv, bias-free 1x1 conv, BatchNorm2d), keyed by the BatchNorms' affinity and the
    depthwise conv's shape; None for anything else."""
    if len(rest) == 1 and type(rest[0]) is nn.BatchNorm2d:
        return ("bn", rest[0].affine)
    if len(rest) != 5:
        return None
    bn1, relu, dw, pw, bn2 = rest
    if not (type(bn1) is type(bn2) is nn.BatchNorm2d and bn1.affine == bn2.affine and type(relu) is nn.ReLU
            and not relu.inplace and type(dw) is type(pw) is nn.Conv2d and dw.bias is None and pw.bias is None
            and dw.groups == dw.in_channels == dw.out_channels == bn1.num_features and dw.stride == (1, 1)
            and pw.groups == 1 and pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.padding == (0, 0)
            and dw.padding_mode == pw.padding_mode == "zeros"):
        return None
    return ("sep", bn1.affine) + _conv_key(dw)
