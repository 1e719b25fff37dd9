"""How :class:`gaea_ext.nn.MixedOp` decides which candidate ops the fused kernel computes.

An op is given a kernel kind by what it does, never by its class name alone:

- torch's own classes by type and configuration: ``nn.Identity`` is ``"skip"``; a 3x3,
  stride-1, padding-1 ``nn.AvgPool2d(count_include_pad=False)`` / ``nn.MaxPool2d`` is
  ``"avg_pool_3x3"`` / ``"max_pool_3x3"``; an ``nn.Sequential`` of such a pool and an
  ``nn.BatchNorm2d(affine=False)`` is the pool's ``"_bn"`` kind (its statistics come from
  :func:`gaea_ext.pool_batch_norm`, which keeps the BatchNorm's running statistics); an
  ``nn.Sequential`` whose last two modules are an ``nn.Conv2d`` and an
  ``nn.BatchNorm2d(affine=False)`` is ``"tensor_bn"``: the modules before the BatchNorm run,
  and the kernel normalises their output (statistics from :func:`gaea_ext.tensor_batch_norm`,
  running statistics kept). (DARTS' conv op classes wrap such a Sequential in their own
  class, whose forward only a probe could check: they stay ``"tensor"``.)
- any other op without parameters or buffers is probed once, at the first forward, on a
  small random tensor with the real input's channel count (``torch.no_grad``, its own random
  generator, so the global RNG stream is untouched), run twice: an op whose output is its
  input is ``"skip"`` (a DARTS ``Identity``), an op whose output is all zeros, at the input's
  size or subsampled by 2 (a DARTS ``Zero`` at stride 1 or 2), is ``"none"``;
- everything else (ops with parameters or buffers, ops with forward hooks, dropout, strided
  pools, ops whose probe fails) is ``"tensor"``: it runs as a module and its output joins the
  fused sum.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.utils import _pair

__all__ = ["static_kind", "probe_kind"]

_PROBE_SIZE = 6
_PROBE_SEED = 0x6AEA


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _is_stateless(m: nn.Module) -> bool:
    return next(m.parameters(), None) is None and next(m.buffers(), None) is None


def _pool_kind(m: nn.Module) -> Optional[str]:
    """The stride-1 3x3 pool kind of a torch pool module, or None."""
    if _has_hooks(m):
        return None
    if type(m) is nn.AvgPool2d:
        stride = m.stride if m.stride is not None else m.kernel_size
        if (_pair(m.kernel_size) == (3, 3) and _pair(stride) == (1, 1) and _pair(m.padding) == (1, 1)
                and not m.ceil_mode and m.count_include_pad is False and m.divisor_override is None):
            return "avg_pool_3x3"
    if type(m) is nn.MaxPool2d:
        stride = m.stride if m.stride is not None else m.kernel_size
        if (_pair(m.kernel_size) == (3, 3) and _pair(stride) == (1, 1) and _pair(m.padding) == (1, 1)
                and _pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices):
            return "max_pool_3x3"
    return None


def _is_pool_bn(m: nn.Module) -> bool:
    """A ``BatchNorm2d(affine=False)`` the kernel can stand in for (``pool_batch_norm``,
    ``tensor_batch_norm``)."""
    return type(m) is nn.BatchNorm2d and not m.affine and not _has_hooks(m)


def static_kind(op: nn.Module) -> Optional[str]:
    """The kind of `op` from its type and configuration; None when only a probe can tell
    (a parameter-free op of another class)."""
    if not isinstance(op, nn.Module):
        raise TypeError(f"MixedOp: every op must be an nn.Module, got {type(op).__name__}")
    if _has_hooks(op):
        return "tensor"
    if type(op) is nn.Identity:
        return "skip"
    kind = _pool_kind(op)
    if kind is not None:
        return kind
    if type(op) is nn.Sequential and len(op) == 2:
        kind = _pool_kind(op[0])
        if kind is not None and _is_pool_bn(op[1]):
            return kind + "_bn"
    if type(op) is nn.Sequential and len(op) >= 2 and isinstance(op[-2], nn.Conv2d) and _is_pool_bn(op[-1]):
        return "tensor_bn"
    if isinstance(op, _DropoutNd) or not _is_stateless(op):
        return "tensor"
    if type(op) in (nn.Sequential, nn.ModuleList, nn.ModuleDict) and len(op) > 0:
        return "tensor"  # a stateless chain of torch modules: not worth a probe
    return None


def probe_kind(op: nn.Module, x: torch.Tensor) -> str:
    """`"skip"`, `"none"` or `"tensor"` for a parameter-free op, from two forwards on a small
    random tensor with `x`'s channel count, dtype and device."""
    gen = torch.Generator(device="cpu").manual_seed(_PROBE_SEED)
    probe = torch.randn(2, x.shape[1], _PROBE_SIZE, _PROBE_SIZE, generator=gen)
    probe = probe.to(dtype=x.dtype, device=x.device)
    kept = probe.clone()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        # fork_rng: a random op's probe draws from a copy of the global RNG state.
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            first = op(probe)
            second = op(probe)
    except Exception:  # noqa: BLE001 - an op that cannot run on the probe runs as a module
        return "tensor"
    if not isinstance(first, torch.Tensor) or not isinstance(second, torch.Tensor):
        return "tensor"
    if not torch.equal(probe, kept):  # the op wrote into its input
        return "tensor"
    if first.shape != second.shape or first.dtype != probe.dtype or not torch.equal(first, second):
        return "tensor"  # random, or not a function of its input alone
    if first.shape == probe.shape and torch.equal(first, probe):
        return "skip"
    if first.shape in (probe.shape, probe[:, :, ::2, ::2].shape) and not first.any():
        return "none"
    return "tensor"
