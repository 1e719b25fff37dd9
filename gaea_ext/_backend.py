"""Loading of the compiled kernels and the choice of implementation per device."""
import os
import warnings

import torch

try:
    from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    HAS_EXTENSION = True
    _IMPORT_ERROR = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    HAS_EXTENSION = False
    _IMPORT_ERROR = error

FORCED_REFERENCE = os.environ.get("GAEA_EXT_BACKEND", "").strip().lower() == "reference"
if os.environ.get("GAEA_EXT_BACKEND", "").strip().lower() not in ("", "reference", "auto"):
    raise ValueError(
        f"GAEA_EXT_BACKEND must be 'reference' or 'auto', got {os.environ['GAEA_EXT_BACKEND']!r}"
    )

if not HAS_EXTENSION and not FORCED_REFERENCE:
    warnings.warn(
        "gaea_ext: the compiled kernels are not available "
        f"({_IMPORT_ERROR}); using the pure-PyTorch reference implementation. "
        "Build them with `pip install --no-build-isolation -e .` (or `make build`).",
        RuntimeWarning,
        stacklevel=2,
    )


def _has_kernel(dispatch_key: str) -> bool:
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gaea_ext::weighted_sum", dispatch_key
    )


_HAS_CPU_KERNELS = _has_kernel("CPU")
_HAS_CUDA_KERNELS = _has_kernel("CUDA")


# Set by the CUDA emulation of the tests (tests/cuda_emulation, GAEA_CUDA_EMULATION=1): the
# CUDA kernels, compiled for the host, serve CPU tensors, and the wrappers route CPU calls as
# they route CUDA ones (e.g. to the reference above the CUDA kernels' size limits).
CPU_SERVED_BY_CUDA_EMULATION = False


def backend(device) -> str:
    """Which implementation serves `device`: "cuda", "cpu" or "reference" (pure PyTorch)."""
    device = torch.device(device)
    if FORCED_REFERENCE:
        return "reference"
    if device.type == "cpu" and CPU_SERVED_BY_CUDA_EMULATION:
        return "cuda"
    if device.type == "cuda" and _HAS_CUDA_KERNELS:
        return "cuda"
    if device.type == "cpu" and _HAS_CPU_KERNELS:
        return "cpu"
    return "reference"


# The CUDA kernels' per-call limits, read from the compiled extension (csrc/cuda_limits.h);
# without the extension no CUDA kernel runs, so there are none.
_CUDA_LIMITS = dict(_C.cuda_limits()) if HAS_EXTENSION else None


def cuda_limits() -> dict:
    """The CUDA kernels' per-call limits (csrc/cuda_limits.h, through gaea_ext._C): a call
    with more than `mixed_node_terms` terms or `mixed_node_xs` xs (mixed_node), more than
    `partial_channel_states` states, or a param with more than `exp_grad_segments` segments
    is served by the reference on CUDA; the other entries only batch launches within a call.
    Raises RuntimeError when the extension is not built (then no CUDA kernel runs)."""
    if _CUDA_LIMITS is None:
        raise RuntimeError(f"gaea_ext: the compiled kernels are not available ({_IMPORT_ERROR}); "
                           "there are no CUDA kernel limits")
    return dict(_CUDA_LIMITS)


def use_reference(device, **counts: int) -> bool:
    """Whether the reference serves a call on `device` rather than the compiled kernels: when
    backend(device) is "reference", or when it is "cuda" and a count of the call exceeds its
    CUDA kernel limit (`counts` keyed by cuda_limits() names, e.g. mixed_node_terms=85).
    The one place every op wrapper asks."""
    kernels = backend(device)
    if kernels == "reference":
        return True
    if kernels == "cuda":
        return any(count > _CUDA_LIMITS[name] for name, count in counts.items())
    return False


def build_info() -> dict:
    """What the compiled extension was built with (CUDA on/off, archs, torch, compiler)."""
    if not HAS_EXTENSION:
        return {
            "cuda": False,
            "cuda_version": None,
            "cuda_arch_list": None,
            "torch_version": None,
            "compiler": None,
            "cpu_kernels": False,
            "error": str(_IMPORT_ERROR),
        }
    info = dict(_C.build_info())
    info["cuda_kernels_registered"] = _HAS_CUDA_KERNELS
    return info
