"""Which device a run uses, and its name for logs and results."""
import os
import platform

import torch

__all__ = ["THREADS_PER_CPU", "device_name", "max_threads", "resolve_device"]

THREADS_PER_CPU = 4


def max_threads() -> int:
    """The most CPU threads a run may ask for: ``THREADS_PER_CPU`` x this machine's CPUs
    (far more makes the OpenMP runtime crash)."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: only cpu and cuda are supported, got {name!r}")
    return dev


def device_name(device: torch.device) -> str:
    """A human-readable name of ``device``: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
