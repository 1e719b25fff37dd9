"""Data-parallel search with PyTorch's own engine (DDP under ``torchrun``).

``torchrun --nproc_per_node=N -m gaea_nas search ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on
the CPU). Weight gradients are reduced by ``DistributedDataParallel``; the architecture
parameters are kept out of DDP and their gradients are averaged by :meth:`Distributed.mean_`
before each architecture step, so every rank applies the same update to the same theta.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .devices import resolve_device

__all__ = ["Distributed", "init_distributed", "place_rank", "run_distributed", "wrap_ddp"]

#: How long a finished gloo rank waits for the others before it fails naming the missing rank.
FINISH_TIMEOUT_S = 600


@dataclass
class Distributed:
    """This process's place in the run; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over the ranks, in place (one flat all-reduce)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def mean_grads_(self, params: Sequence[nn.Parameter]) -> None:
        """Average the ``.grad`` of ``params`` over the ranks (the architecture gradients)."""
        self.mean_([p.grad for p in params if p.grad is not None])

    def sum_values(self, values: Dict[str, float], device) -> Dict[str, float]:
        """Sum a dict of numbers over the ranks (metric accumulators)."""
        if not self.enabled:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def any_flag(self, flag: bool, device) -> bool:
        """True on every rank if ``flag`` is true on any rank (e.g. a stop request)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def identical(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether ``tensors`` are bitwise equal on every rank (gathers them)."""
        if not self.enabled:
            return True
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        gathered: List[torch.Tensor] = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(gathered, flat)
        return all(torch.equal(gathered[0], g) for g in gathered[1:])

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
        if self.enabled:
            for t in tensors:
                dist.broadcast(t, src)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def finish(self) -> None:
        """Wait for every rank at the end of a run, so that no rank leaves the process group
        while another still works (a gloo rank whose peers tear down early can abort in its
        worker threads). gloo waits at most ``FINISH_TIMEOUT_S`` and names a missing rank."""
        if not self.enabled:
            return
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=FINISH_TIMEOUT_S))
        else:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_kind: str) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (no-op when
    ``WORLD_SIZE`` is unset or 1). ``device_kind`` ``"cuda"`` uses NCCL, ``"cpu"`` gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world, local_rank=local)


def place_rank(device: torch.device, ctx: Distributed, threads: Optional[int]) -> torch.device:
    """This rank's device: its own GPU (made current) when distributed on CUDA, else ``device``;
    also sets torch's thread count when ``threads`` is given."""
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    return device


def run_distributed(device_spec: str, start: Callable[[torch.device, Distributed], Any]) -> Any:
    """Resolve ``device_spec``, join the process group, build a run with ``start(device, ctx)``
    and return ``run.run()`` once every rank has finished it. On any failure
    ``run.discard_if_unsaved()`` is called before the error propagates; the process group is
    always left."""
    device = resolve_device(device_spec)
    ctx = init_distributed(device.type)
    try:
        run = start(device, ctx)
        try:
            result = run.run()
        except BaseException:
            run.discard_if_unsaved()
            raise
        ctx.finish()
        return result
    finally:
        ctx.close()


def wrap_ddp(model: nn.Module, ctx: Distributed, device: torch.device, find_unused: bool) -> nn.Module:
    """``model`` inside ``DistributedDataParallel`` with its architecture parameters excluded
    (they are reduced by hand before the EG/Adam step; a model without ``arch_parameters()``,
    e.g. a discrete network, has none); the model itself when not distributed."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    arch = {id(p) for p in model.arch_parameters()} if hasattr(model, "arch_parameters") else set()
    ignore = [name for name, p in model.named_parameters() if id(p) in arch]
    DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)
