"""Loading of the compiled kernels and the choice of implementation per device.

GAEA_EXT_BACKEND: "auto" (default), "reference" (the pure-PyTorch references everywhere) or
"cupy" (the CUDA kernels compiled at run time with NVRTC and launched through cupy,
gaea_ext/cupy_backend.py, over any compiled CUDA kernels). Without "cupy", the NVRTC backend
serves CUDA tensors when the compiled extension has no CUDA kernels and cupy is installed.
"""
import importlib.util
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

_BACKEND_SETTING = os.environ.get("GAEA_EXT_BACKEND", "").strip().lower()
FORCED_REFERENCE = _BACKEND_SETTING == "reference"
FORCED_CUPY = _BACKEND_SETTING == "cupy"
if _BACKEND_SETTING not in ("", "reference", "auto", "cupy"):
    raise ValueError(
        f"GAEA_EXT_BACKEND must be 'reference', 'cupy' or 'auto', got {os.environ['GAEA_EXT_BACKEND']!r}"
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

# Without gaea_ext._C the op schemas are defined from Python (gaea_ext/_schemas.py), so the
# NVRTC backend can serve them and the op modules register their fakes and autograd.
_SCHEMA_LIBRARY = None
if not HAS_EXTENSION:
    from ._schemas import define_schemas

    _SCHEMA_LIBRARY = define_schemas()
# torch.ops.gaea_ext.* exist (from gaea_ext._C or from _schemas): the op modules register fakes and autograd.
HAS_OPS = HAS_EXTENSION or _SCHEMA_LIBRARY is not None


def _cupy_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None and importlib.util.find_spec("cupy_backends") is not None


# The NVRTC backend's launchers as the CUDA kernels (gaea_ext/cupy_backend.py).
_CUPY_LIBRARY = None
if not FORCED_REFERENCE and (FORCED_CUPY or (not _HAS_CUDA_KERNELS and _cupy_installed())):
    try:
        from . import cupy_backend

        _CUPY_LIBRARY = cupy_backend.register("CUDA")
    except (ImportError, OSError) as error:  # e.g. the kernel headers (package data) are missing
        if FORCED_CUPY:
            raise
        warnings.warn(f"gaea_ext: the NVRTC backend is not available ({error})", RuntimeWarning, stacklevel=2)


# Set by the CUDA emulation of the tests (tests/cuda_emulation, GAEA_CUDA_EMULATION=1): the
# CUDA kernels, compiled for the host, serve CPU tensors, and the wrappers route CPU calls as
# they route CUDA ones (e.g. to the reference above the CUDA kernels' size limits).
CPU_SERVED_BY_CUDA_EMULATION = False


def backend(device) -> str:
    """Which implementation serves `device`: "cuda" (the compiled CUDA kernels), "cupy" (the
    CUDA kernels compiled with NVRTC, launched through cupy), "cpu" or "reference" (pure
    PyTorch)."""
    device = torch.device(device)
    if FORCED_REFERENCE:
        return "reference"
    if device.type == "cpu" and CPU_SERVED_BY_CUDA_EMULATION:
        return "cupy" if FORCED_CUPY else "cuda"
    if device.type == "cuda" and _CUPY_LIBRARY is not None:
        return "cupy"
    if device.type == "cuda" and _HAS_CUDA_KERNELS:
        return "cuda"
    if device.type == "cpu" and _HAS_CPU_KERNELS:
        return "cpu"
    return "reference"


# The CUDA kernels' per-call limits, read from the compiled extension (csrc/cuda_limits.h), or
# from the kernel headers for the NVRTC backend; without either no CUDA kernel runs.
if HAS_EXTENSION:
    _CUDA_LIMITS = dict(_C.cuda_limits())
elif _CUPY_LIBRARY is not None:
    _CUDA_LIMITS = cupy_backend.cuda_limits()
else:
    _CUDA_LIMITS = None


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
    backend(device) is "reference", or when it is "cuda" or "cupy" and a count of the call exceeds its
    CUDA kernel limit (`counts` keyed by cuda_limits() names, e.g. mixed_node_terms=85).
    The one place every op wrapper asks."""
    kernels = backend(device)
    if kernels == "reference":
        return True
    if kernels in ("cuda", "cupy"):
        return any(count > _CUDA_LIMITS[name] for name, count in counts.items())
    return False


def _nvrtc_info() -> dict:
    """The NVRTC backend: whether it serves CUDA, cupy's and NVRTC's versions, the cubin cache."""
    info = {"cupy_backend": _CUPY_LIBRARY is not None, "cupy_version": None, "nvrtc_version": None,
            "nvrtc_cache_dir": None}
    if _cupy_installed():
        from . import cupy_backend

        info.update(cupy_backend.versions())
    return info


def build_info() -> dict:
    """What the compiled extension was built with (CUDA on/off, archs, torch, compiler), and
    the NVRTC backend's state (cupy and NVRTC versions, cubin cache directory)."""
    if not HAS_EXTENSION:
        info = {
            "cuda": False,
            "cuda_version": None,
            "cuda_arch_list": None,
            "torch_version": None,
            "compiler": None,
            "cpu_kernels": False,
            "error": str(_IMPORT_ERROR),
        }
    else:
        info = dict(_C.build_info())
        info["cuda_kernels_registered"] = _HAS_CUDA_KERNELS
    info.update(_nvrtc_info())
    return info
