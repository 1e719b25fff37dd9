"""The CUDA kernels without nvcc: the NVRTC-compiled kernels (gaea_ext.nvrtc) launched through
cupy, as the CUDA implementations of the gaea_ext ops.

Each launcher below mirrors its C++ launcher (csrc/cuda/<op>_cuda.cu): the same grids, the
same input grouping and chunking, the same constants (read from the kernel headers, so they
cannot drift), and the same kernel instantiations (gaea_ext.nvrtc.KERNELS). Kernel arguments
are packed as cuLaunchKernel's kernelParams (one pointer per parameter; the structs of fixed
pointer arrays as ctypes structures with the C layout) and launched on the tensor's device, on
torch's current stream.

register(dispatch_key) makes these launchers the implementations of the gaea_ext ops for a
dispatch key: "CUDA" when the compiled extension has no CUDA kernels or GAEA_EXT_BACKEND=cupy
(gaea_ext._backend does this at import), "CPU" under the CPU emulation of the tests, where
set_launcher() swaps the cupy launch for the emulated kernels of the same name
(tests/cuda_emulation/build.py, emulated_launcher).
"""
import ctypes
import itertools
import math
import re
import threading
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import torch

from . import nvrtc
from ._layout import batch_major_format, batch_outermost, memory_format_of, share_dense_layout

_NVRTC_TYPES = {dtype: nvrtc.DTYPES[name] for dtype, name in (
    (torch.float16, "float16"), (torch.bfloat16, "bfloat16"), (torch.float32, "float32"), (torch.float64, "float64"))}
_CONSTEXPR = re.compile(r"constexpr\s+(?:int|long long|unsigned)\s+(\w+)\s*=\s*([^;]+);")


@lru_cache(maxsize=None)
def header_constants(header: str) -> Dict[str, int]:
    """The integer constexprs of a kernel header and of the headers it includes, by name
    (e.g. header_constants("weighted_sum.cuh")["kThreads"]). Values are integer literals or
    + - * / << expressions of earlier constants; constexprs of template parameters (inside
    kernels) are skipped."""
    values: Dict[str, int] = {}
    for name in reversed(nvrtc.included_headers(header)):
        for constant, expression in _CONSTEXPR.findall(nvrtc.header_text(name)):
            expression = re.sub(r"static_cast<[\w ]+>", "", expression)
            if not re.fullmatch(r"[\w\s+\-*/()<>]+", expression):
                raise ValueError(f"{name}: cannot read constexpr {constant} = {expression}")
            python = re.sub(r"\b(\d+)(?:LL|ll|u|U)?\b", r"\1", expression).replace("/", "//")
            try:
                values[constant] = int(eval(python, {"__builtins__": {}}, dict(values)))  # noqa: S307
            except (NameError, SyntaxError):
                continue
    return values


def cuda_limits() -> Dict[str, int]:
    """The kernels' per-call limits (csrc/kernels/limits.cuh), named as gaea_ext.cuda_limits()."""
    c = header_constants("limits.cuh")
    return {
        "mixed_node_terms": c["kMaxMixedTerms"], "mixed_node_xs": c["kMaxMixedSources"],
        "partial_channel_states": c["kMaxPartialChannelStates"], "exp_grad_segments": c["kMaxExpGradSegments"],
        "weighted_sum_inputs_per_launch": c["kMaxInputsPerLaunch"],
        "exp_grad_params_per_launch": c["kMaxExpGradParamsPerLaunch"], "dot_row_bytes": c["kDotRowBytes"],
    }


# ---- launching ------------------------------------------------------------------------------


class CupyLauncher:
    """Launches the NVRTC cubins through cupy on a CUDA device (loaded once per device and
    header, for the device's architecture)."""

    def __init__(self):
        self._modules = {}
        self._lock = threading.Lock()

    def multiprocessor_count(self, device: torch.device) -> int:
        return torch.cuda.get_device_properties(device).multi_processor_count

    def _function(self, device: torch.device, header: str, expr: str) -> int:
        import cupy
        from cupy_backends.cuda.api import driver

        key = (device.index, header)
        with self._lock:
            entry = self._modules.get(key)
            if entry is None:
                major, minor = torch.cuda.get_device_capability(device)
                compiled = nvrtc.compile_header(header, f"sm_{major}{minor}")
                with cupy.cuda.Device(device.index):  # the device's primary context, shared with torch
                    module = driver.moduleLoadData(compiled.cubin)
                entry = self._modules[key] = (module, compiled.lowered, {})
            module, lowered, functions = entry
            if expr not in functions:
                functions[expr] = driver.moduleGetFunction(module, lowered[expr])
            return functions[expr]

    def launch(self, device, header, expr, grid, block, shared_bytes, params) -> None:
        import cupy
        from cupy_backends.cuda.api import driver

        function = self._function(device, header, expr)
        with cupy.cuda.Device(device.index):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
            driver.launchKernel(function, *grid, *block, shared_bytes, stream.ptr, ctypes.addressof(params), 0)


_LAUNCHER = None


def set_launcher(launcher) -> None:
    """Use `launcher` (multiprocessor_count(device), launch(device, header, expr, grid, block,
    shared_bytes, params)) instead of cupy; None restores cupy."""
    global _LAUNCHER
    _LAUNCHER = launcher


def _launcher():
    global _LAUNCHER
    if _LAUNCHER is None:
        _LAUNCHER = CupyLauncher()
    return _LAUNCHER


def _dim3(value) -> tuple:
    value = (value,) if isinstance(value, int) else tuple(value)
    return tuple(int(v) for v in value) + (1,) * (3 - len(value))


def _launch(device, header: str, expr: str, grid, block, args: Sequence, shared_bytes: int = 0) -> None:
    """Launch kernel `expr` of `header` with ctypes `args`, one per kernel parameter."""
    params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
    _launcher().launch(device, header, expr, _dim3(grid), _dim3(block), shared_bytes, params)


def _ptr(t: Optional[torch.Tensor], offset: int = 0) -> ctypes.c_void_p:
    """A pointer argument: element `offset` of `t`, or nullptr for None."""
    if t is None:
        return ctypes.c_void_p(None)
    return ctypes.c_void_p(t.data_ptr() + offset * t.element_size())


def _types(dtype: torch.dtype):
    """(NVRTC element type, accumulation type, accumulation dtype) of a tensor dtype."""
    element, acc = _NVRTC_TYPES[dtype]
    return element, acc, torch.float64 if dtype == torch.float64 else torch.float32


def _acc_scalar(acc: str, value: float):
    return ctypes.c_double(value) if acc == "double" else ctypes.c_float(value)


def _grid_for(numel: int, threads: int, cap: int) -> int:
    return max(1, min((numel + threads - 1) // threads, cap))


def _with_shared_layout(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return tensors if share_dense_layout(tensors) else [t.contiguous() for t in tensors]


def _in_layout_of(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if memory_format_of(like) == torch.channels_last:
        return result.contiguous(memory_format=torch.channels_last)
    return result


def _has_even_planes(t: torch.Tensor) -> bool:
    return t.shape[2] == 1 or t.shape[3] == 1 or t.stride(2) == t.shape[3] * t.stride(3)


def _plane_strides(t: torch.Tensor):
    """(n, c, cell) strides of a 4-D tensor's planes (host_common's plane_strides)."""
    cell = t.stride(2) if t.shape[3] == 1 and t.shape[2] > 1 else t.stride(3)
    return t.stride(0), t.stride(1), cell


def _empty_in_layout_of(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(like.shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))


def _pointer_array(count: int):
    return ctypes.c_void_p * count


# ---- weighted_sum ---------------------------------------------------------------------------

_WS = "weighted_sum.cuh"
_WS_NS = "gaea_kernels::weighted_sum::"


class _InputPtrs(ctypes.Structure):
    _fields_ = [("ptr", _pointer_array(header_constants(_WS)["kMaxK"]))]


def _aligned16(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def weighted_sum(inputs: List[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """gaea_ext::weighted_sum (mirror of weighted_sum_cuda)."""
    c = header_constants(_WS)
    ys = _with_shared_layout(list(inputs))
    out = torch.empty_like(ys[0], memory_format=torch.preserve_format)
    n = out.numel()
    if n == 0:
        return out
    device = out.device
    K, max_k, threads = len(ys), c["kMaxK"], c["kThreads"]
    element, acc, acc_dtype = _types(out.dtype)
    w = weights.to(acc_dtype).contiguous()
    max_blocks = _launcher().multiprocessor_count(device) * c["kFwdBlocksPerSm"]
    same = element == acc
    # K > kMaxK: the running sum between input groups in the accumulation type.
    running = None
    if K > max_k:
        running = out if same else torch.empty(n, dtype=acc_dtype, device=device)
    vectorize = _aligned16(out) and (running is None or _aligned16(running)) and all(_aligned16(y) for y in ys)
    vec = nvrtc.vector_width(element) if vectorize else 1
    units = max(n // vec, 1) if vectorize else n
    blocks = min((units + threads - 1) // threads, max_blocks)
    for k0 in range(0, K, max_k):
        kc = min(max_k, K - k0)
        ptrs = _InputPtrs()
        for k in range(kc):
            ptrs.ptr[k] = ys[k0 + k].data_ptr()
        prev = None if k0 == 0 else running
        last = k0 + kc == K
        dest, dest_type = (out, element) if last or same else (running, acc)
        _launch(device, _WS, f"{_WS_NS}weighted_sum_kernel<{element}, {acc}, {dest_type}, {vec}>", blocks, threads,
                [ptrs, _ptr(w, k0), ctypes.c_int(kc), _ptr(prev), _ptr(dest), ctypes.c_longlong(n)])
    return out


def _backward_operands(grad_out, inputs, inputs_need_grad, weights_need_grad: bool, shared_layout,
                       fallback=lambda first: torch.contiguous_format):
    """`inputs + [grad_out]` as a weighted sum's backward kernels read them: as they are when
    `shared_layout` holds for them, else in the layout `fallback(inputs[0])` (only grad_out
    when the weight gradient, the inputs' one reader, is not needed); and the requested input
    gradients, by index, in grad_out's layout."""
    every = list(inputs) + [grad_out]
    if not shared_layout(every):
        fmt = fallback(every[0])
        if weights_need_grad:
            every = [t.contiguous(memory_format=fmt) for t in every]
        else:
            every[-1] = grad_out.contiguous(memory_format=fmt)
    grads = {k: torch.empty_like(every[-1], memory_format=torch.preserve_format)
             for k, need in enumerate(inputs_need_grad) if need}
    return every, grads


def _backward_group(pointers, k0: int, kc: int, inputs, grads: Dict[int, torch.Tensor], weights_need_grad: bool):
    """The pointer structs (ctypes type `pointers`) of input group [k0, k0 + kc) of a weighted
    sum's backward: the inputs (read only for the weight gradient, else nullptr) and the
    requested input gradients (else nullptr); and whether the group has any of the latter."""
    ys, gs = pointers(), pointers()
    any_grad = False
    for k in range(kc):
        if weights_need_grad:
            ys.ptr[k] = inputs[k0 + k].data_ptr()
        if k0 + k in grads:
            gs.ptr[k] = grads[k0 + k].data_ptr()
            any_grad = True
    return ys, gs, any_grad


def weighted_sum_backward(grad_out, inputs, weights, inputs_need_grad, weights_need_grad):
    """gaea_ext::weighted_sum_backward (mirror of weighted_sum_backward_cuda)."""
    c = header_constants(_WS)
    K, max_k, threads, chunk = len(inputs), c["kMaxK"], c["kThreads"], c["kBwdChunk"]
    every, grads = _backward_operands(grad_out, inputs, inputs_need_grad, weights_need_grad, share_dense_layout)
    g = every[-1]
    n = g.numel()
    element, acc, acc_dtype = _types(g.dtype)
    grad_list = [grads[k] for k in sorted(grads)]
    if n == 0 or (not grads and not weights_need_grad):
        grad_weights = (torch.zeros(K, dtype=weights.dtype, device=weights.device) if weights_need_grad
                        else weights.new_empty((0,)))
        return grad_list, grad_weights
    device = g.device
    w = weights.to(acc_dtype).contiguous()
    num_blocks = (n + chunk - 1) // chunk
    partials = torch.empty((K, num_blocks), dtype=acc_dtype, device=device) if weights_need_grad else None
    grad_weights_acc = torch.empty(K, dtype=acc_dtype, device=device) if weights_need_grad else None
    vectorize = _aligned16(g) and all(_aligned16(t) for t in grad_list)
    if weights_need_grad:
        vectorize = vectorize and all(_aligned16(t) for t in every[:K])
    vec = nvrtc.vector_width(element) if vectorize else 1
    for k0 in range(0, K, max_k):
        kc = min(max_k, K - k0)
        ys, gs, any_grad = _backward_group(_InputPtrs, k0, kc, every, grads, weights_need_grad)
        if not any_grad and not weights_need_grad:
            continue
        chunk_partials = _ptr(partials, k0 * num_blocks) if partials is not None else _ptr(None)
        _launch(device, _WS, f"{_WS_NS}weighted_sum_backward_kernel<{element}, {acc}, {vec}>", num_blocks, threads,
                [_ptr(g), ys, gs, _ptr(w, k0), ctypes.c_int(kc), ctypes.c_longlong(n), chunk_partials,
                 ctypes.c_longlong(num_blocks)])
    if weights_need_grad:
        _launch(device, _WS, f"{_WS_NS}reduce_partials_kernel<{acc}>", K, threads,
                [_ptr(partials), ctypes.c_longlong(num_blocks), _ptr(grad_weights_acc)])
        grad_weights = grad_weights_acc.to(weights.dtype)
    else:
        grad_weights = weights.new_empty((0,))
    return grad_list, grad_weights


# ---- sample_weighted_sum --------------------------------------------------------------------

_SWS = "sample_weighted_sum.cuh"
_SWS_NS = "gaea_kernels::"


class _SampleSumPtrs(ctypes.Structure):
    """SampleSumInputs<T> / SampleSumGrads<T>: one launch's input (or gradient) pointers."""
    _fields_ = [("ptr", _pointer_array(header_constants(_SWS)["kSampleSumMaxInputs"]))]


def _share_batch_major_layout(tensors: List[torch.Tensor]) -> bool:
    return batch_outermost(tensors[0]) and share_dense_layout(tensors)


def _sample_sum_vectorizes(tensors: List[torch.Tensor], inner: int, vec: int) -> bool:
    """The VEC-wide path: every pointer 16-byte aligned and no vector straddles two samples."""
    return inner % vec == 0 and all(_aligned16(t) for t in tensors)


def sample_weighted_sum(inputs: List[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """gaea_ext::sample_weighted_sum (mirror of sample_weighted_sum_cuda)."""
    c = header_constants(_SWS)
    max_inputs, threads = c["kSampleSumMaxInputs"], c["kSampleSumThreads"]
    ys = list(inputs)
    if not _share_batch_major_layout(ys):
        ys = [t.contiguous(memory_format=batch_major_format(ys[0])) for t in ys]
    out = torch.empty_like(ys[0], memory_format=torch.preserve_format)
    n = out.numel()
    if n == 0:
        return out
    device = out.device
    K, samples = len(ys), out.shape[0]
    inner = n // samples
    element, acc, acc_dtype = _types(out.dtype)
    w = weights.to(acc_dtype).contiguous()  # [K, N]
    same = element == acc
    # K > kSampleSumMaxInputs: the running sum between input groups in the accumulation type.
    running = None
    if K > max_inputs:
        running = out if same else torch.empty(n, dtype=acc_dtype, device=device)
    vec = nvrtc.vector_width(element)
    if not _sample_sum_vectorizes([out] + ([running] if running is not None else []) + ys, inner, vec):
        vec = 1
    blocks = min((n // vec + threads - 1) // threads, c["kSampleSumMaxBlocks"])
    for k0 in range(0, K, max_inputs):
        kc = min(max_inputs, K - k0)
        group = _SampleSumPtrs()
        for k in range(kc):
            group.ptr[k] = ys[k0 + k].data_ptr()
        prev = None if k0 == 0 else running
        dest, dest_type = (out, element) if k0 + kc == K or same else (running, acc)
        _launch(device, _SWS, f"{_SWS_NS}sample_weighted_sum_kernel<{element}, {acc}, {dest_type}, {vec}>", blocks,
                threads, [group, _ptr(w, k0 * samples), ctypes.c_int(kc), ctypes.c_longlong(samples),
                          ctypes.c_longlong(inner), _ptr(prev), _ptr(dest), ctypes.c_longlong(n)])
    return out


def sample_weighted_sum_backward(grad_out, inputs, weights, inputs_need_grad, weights_need_grad):
    """gaea_ext::sample_weighted_sum_backward (mirror of sample_weighted_sum_backward_cuda)."""
    c = header_constants(_SWS)
    max_inputs, threads, chunk = c["kSampleSumMaxInputs"], c["kSampleSumThreads"], c["kSampleSumBwdChunk"]
    K = len(inputs)
    every, grads = _backward_operands(grad_out, inputs, inputs_need_grad, weights_need_grad,
                                      _share_batch_major_layout, batch_major_format)
    g = every[-1]
    n = g.numel()
    grad_list = [grads[k] for k in sorted(grads)]
    if n == 0 or (not grads and not weights_need_grad):
        grad_weights = (torch.zeros(weights.shape, dtype=weights.dtype, device=weights.device) if weights_need_grad
                        else weights.new_empty((0,)))
        return grad_list, grad_weights
    device = g.device
    samples = g.shape[0]
    inner = n // samples
    element, acc, acc_dtype = _types(g.dtype)
    w = weights.to(acc_dtype).contiguous()  # [K, N]
    chunks_per_sample = (inner + chunk - 1) // chunk
    num_blocks = samples * chunks_per_sample
    if num_blocks > 2**31 - 1:
        raise RuntimeError(f"sample_weighted_sum_backward: tensor too large ({n} elements)")
    partials = torch.empty((K, num_blocks), dtype=acc_dtype, device=device) if weights_need_grad else None
    grad_weights_acc = torch.empty((K, samples), dtype=acc_dtype, device=device) if weights_need_grad else None
    vec = nvrtc.vector_width(element)
    if not _sample_sum_vectorizes([g] + grad_list + (every[:K] if weights_need_grad else []), inner, vec):
        vec = 1
    for k0 in range(0, K, max_inputs):
        kc = min(max_inputs, K - k0)
        ys, gs, any_grad = _backward_group(_SampleSumPtrs, k0, kc, every, grads, weights_need_grad)
        if not any_grad and not weights_need_grad:
            continue
        _launch(device, _SWS, f"{_SWS_NS}sample_weighted_sum_backward_kernel<{element}, {acc}, {vec}>", num_blocks,
                threads, [_ptr(g), ys, gs, _ptr(w, k0 * samples), ctypes.c_int(kc), ctypes.c_longlong(samples),
                          ctypes.c_longlong(inner), ctypes.c_longlong(chunks_per_sample),
                          _ptr(partials, k0 * num_blocks) if partials is not None else _ptr(None),
                          ctypes.c_longlong(num_blocks)])
    if weights_need_grad:
        rows = K * samples
        _launch(device, _SWS, f"{_SWS_NS}sample_weighted_sum_reduce_kernel<{acc}>", (rows + threads - 1) // threads,
                threads, [_ptr(partials), ctypes.c_longlong(rows), ctypes.c_longlong(chunks_per_sample),
                          _ptr(grad_weights_acc)])
        grad_weights = grad_weights_acc.to(weights.dtype)
    else:
        grad_weights = weights.new_empty((0,))
    return grad_list, grad_weights


# ---- exp_grad_step_ -------------------------------------------------------------------------

_EG = "exp_grad.cuh"
_EG_NS = "gaea_kernels::exp_grad::"


class _TensorBatch(ctypes.Structure):
    _P = header_constants(_EG)["kMaxTensorsPerLaunch"]
    _S = header_constants(_EG)["kMaxSegments"]
    _fields_ = [
        ("param", ctypes.c_void_p * _P), ("grad", ctypes.c_void_p * _P),
        ("numel", ctypes.c_longlong * _P), ("row", ctypes.c_longlong * _P),
        ("lr", ctypes.c_double * _P), ("min_value", ctypes.c_double * _P),
        ("log_min_value", ctypes.c_double * _P), ("entropic_reg", ctypes.c_double * _P),
        ("seg_first", ctypes.c_int * _P), ("seg_count", ctypes.c_int * _P),
        ("seg_start", ctypes.c_longlong * _S), ("count", ctypes.c_int),
    ]


def _make_batch(indices, params, grads, info) -> _TensorBatch:
    batch = _TensorBatch()
    batch.count = len(indices)
    used = 0
    for i, t in enumerate(indices):
        lr, min_value, log_min_value, entropic_reg, seg_start = info[t]
        batch.param[i] = params[t].data_ptr()
        batch.grad[i] = grads[t].data_ptr()
        batch.numel[i] = params[t].numel()
        batch.row[i] = params[t].shape[-1]
        batch.lr[i], batch.min_value[i] = lr, min_value
        batch.log_min_value[i], batch.entropic_reg[i] = log_min_value, entropic_reg
        batch.seg_first[i], batch.seg_count[i] = used, len(seg_start)
        for start in seg_start:
            batch.seg_start[used] = start
            used += 1
    return batch


def exp_grad_step_(params, grads, lrs, segments, segment_counts, min_values, entropic_regs,
                   normalize_first, adaptive) -> torch.Tensor:
    """gaea_ext::exp_grad_step_ (mirror of exp_grad_step_cuda)."""
    c = header_constants(_EG)
    max_tensors, max_segments, threads = c["kMaxTensorsPerLaunch"], c["kMaxSegments"], c["kThreads"]
    if len(params) == 0:
        raise ValueError("exp_grad_step_ (CUDA kernel): 'params' must hold at least one tensor")
    device = params[0].device
    info, offset = [], 0
    for t, p in enumerate(params):
        count = segment_counts[t]
        if count > max_segments:
            raise ValueError(f"exp_grad_step_ (CUDA kernel): params[{t}] is split into {count} segments, but the "
                             f"CUDA kernel handles at most {max_segments} segments per param")
        starts = [0] + list(itertools.accumulate(segments[offset:offset + count - 1])) if count > 0 else []
        offset += count
        log_min = math.log(min_values[t]) if min_values[t] > 0.0 else 0.0
        info.append((lrs[t], min_values[t], log_min, entropic_regs[t], starts))
    grads_c = [None] * len(params)
    total_numel = 0
    for t, p in enumerate(params):
        if p.numel() == 0:
            continue
        grads_c[t] = grads[t].to(p.dtype).contiguous()
        total_numel += p.numel()
    # A new batch starts at a new dtype, or when the tensor or segment budget is used up.
    batches, batch_dtype, taken, batch_segments = [], [], [False] * len(params), 0
    for first in range(len(params)):
        if taken[first] or params[first].numel() == 0:
            continue
        dtype = params[first].dtype
        for t in range(first, len(params)):
            if taken[t] or params[t].numel() == 0 or params[t].dtype != dtype:
                continue
            n_seg = len(info[t][4])
            if (not batches or batch_dtype[-1] != dtype or len(batches[-1]) == max_tensors
                    or batch_segments + n_seg > max_segments):
                batches.append([])
                batch_dtype.append(dtype)
                batch_segments = 0
            batches[-1].append(t)
            batch_segments += n_seg
            taken[t] = True
    if not batches:
        return torch.zeros((), dtype=torch.int32, device=device)
    if len(batches) == 1 and total_numel <= c["kFusedMaxNumel"]:
        found = torch.empty((), dtype=torch.int32, device=device)  # written by the kernel
        element, acc, _ = _types(batch_dtype[0])
        batch = _make_batch(batches[0], params, grads_c, info)
        _launch(device, _EG, f"{_EG_NS}exp_grad_fused_kernel<{element}, {acc}>", 1, threads,
                [batch, ctypes.c_bool(normalize_first), ctypes.c_bool(adaptive), _ptr(found)])
        return found
    found = torch.zeros((), dtype=torch.int32, device=device)
    max_abs = torch.empty(sum(len(b) for b in batches), dtype=torch.float64, device=device)
    # Every inspection is queued before any step, so a bad tensor anywhere blocks them all.
    for phase in (0, 1):
        offset = 0
        for indices, dtype in zip(batches, batch_dtype):
            element, acc, _ = _types(dtype)
            batch = _make_batch(indices, params, grads_c, info)
            if phase == 0:
                _launch(device, _EG, f"{_EG_NS}exp_grad_inspect_kernel<{element}, {acc}>", len(indices), threads,
                        [batch, ctypes.c_bool(adaptive), _ptr(found), _ptr(max_abs, offset)])
            else:
                _launch(device, _EG, f"{_EG_NS}exp_grad_step_kernel<{element}, {acc}>", len(indices), threads,
                        [batch, ctypes.c_bool(normalize_first), ctypes.c_bool(adaptive), _ptr(found),
                         _ptr(max_abs, offset)])
            offset += len(indices)
    return found


# ---- mixed_node ---------------------------------------------------------------------------

_MN = "mixed_node.cuh"
_MN_NS = "gaea_kernels::mixed_node::"


def _kind(name: str) -> int:
    return header_constants("term_kinds.cuh")[name]


def _is_output_kind(kind: int) -> bool:
    return kind in (_kind("kTensor"), _kind("kTensorBN"))


def _bn_rank(kinds: Sequence[int]) -> List[int]:
    """Each term's rank among the BN terms (the kinds named k...BN), or -1."""
    bn_kinds = {value for name, value in header_constants("term_kinds.cuh").items() if re.fullmatch(r"k\w+BN", name)}
    rank, count = [], 0
    for kind in kinds:
        rank.append(count if kind in bn_kinds else -1)
        count += kind in bn_kinds
    return rank


class _NodeArgs(ctypes.Structure):
    _T, _S = header_constants(_MN)["kMaxT"], header_constants(_MN)["kMaxS"]
    _fields_ = [("xs", ctypes.c_void_p * _S), ("ys", ctypes.c_void_p * _T), ("y_n", ctypes.c_longlong * _T),
                ("y_c", ctypes.c_longlong * _T), ("y_cell", ctypes.c_longlong * _T), ("kinds", ctypes.c_int * _T),
                ("src", ctypes.c_int * _T), ("bn", ctypes.c_int * _T), ("T", ctypes.c_int)]


class _GradArgs(ctypes.Structure):
    _fields_ = [("gx", ctypes.c_void_p * _NodeArgs._S), ("gy", ctypes.c_void_p * _NodeArgs._T)]


class _TermList(ctypes.Structure):  # BnTerms (count B) and DotTerms (count D): the same layout
    _fields_ = [("term", ctypes.c_int * _NodeArgs._T), ("count", ctypes.c_int)]


def _check_mn_limits(xs, kinds) -> None:
    limits = cuda_limits()
    if len(kinds) > limits["mixed_node_terms"]:
        raise ValueError(f"mixed_node (CUDA): at most {limits['mixed_node_terms']} terms per call, got {len(kinds)}")
    if len(xs) > limits["mixed_node_xs"]:
        raise ValueError(f"mixed_node (CUDA): at most {limits['mixed_node_xs']} xs per call, got {len(xs)}")


def _node_args(xs, ys, kinds, sources, bn_rank) -> _NodeArgs:
    a = _NodeArgs()
    for s, x in enumerate(xs):
        a.xs[s] = x.data_ptr()
    a.T = len(kinds)
    for t, kind in enumerate(kinds):
        a.kinds[t], a.src[t], a.bn[t] = kind, sources[t], bn_rank[t]
        if _is_output_kind(kind):
            y = ys[sources[t]]
            a.ys[t] = y.data_ptr()
            a.y_n[t], a.y_c[t], a.y_cell[t] = _plane_strides(y)
    return a


def _term_list(terms: List[int]) -> _TermList:
    out = _TermList()
    out.count = len(terms)
    for i, t in enumerate(terms):
        out.term[i] = t
    return out


def _norm_as(norm: Optional[torch.Tensor], acc_dtype) -> Optional[torch.Tensor]:
    if norm is None or norm.numel() == 0:
        return None
    return norm.to(acc_dtype).contiguous()


def mixed_node(xs_in, outputs_in, weights, kinds, sources, norm=None) -> torch.Tensor:
    """gaea_ext::mixed_node (mirror of mixed_node_cuda)."""
    _check_mn_limits(xs_in, kinds)
    c = header_constants(_MN)
    threads = c["kThreads"]
    xs = [x.contiguous() for x in xs_in]
    ys = [y if _has_even_planes(y) else y.contiguous() for y in outputs_in]
    x0 = xs[0]
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    numel = x0.numel()
    if numel == 0:
        return _in_layout_of(out, xs_in[0])
    _, C, H, W = x0.shape
    element, acc, acc_dtype = _types(x0.dtype)
    wt = weights.to(acc_dtype).contiguous()
    nt = _norm_as(norm, acc_dtype)
    _launch(x0.device, _MN, f"{_MN_NS}mixed_node_kernel<{element}, {acc}>", _grid_for(numel, threads, c["kMaxGrid"]),
            threads, [_node_args(xs, ys, kinds, sources, _bn_rank(kinds)), _ptr(wt), _ptr(nt), _ptr(out),
                      ctypes.c_longlong(numel), ctypes.c_int(C), ctypes.c_int(H), ctypes.c_int(W)])
    return _in_layout_of(out, xs_in[0])


def mixed_node_backward(grad_out_in, xs_in, outputs_in, weights, kinds, sources, norm, xs_need_grad,
                        outputs_need_grad, weights_need_grad, norm_need_grad):
    """gaea_ext::mixed_node_backward (mirror of mixed_node_backward_cuda)."""
    _check_mn_limits(xs_in, kinds)
    c = header_constants(_MN)
    threads, cap = c["kThreads"], c["kMaxGrid"]
    xs = [x.contiguous() for x in xs_in]
    ys = [y if _has_even_planes(y) else y.contiguous() for y in outputs_in]
    grad_out = grad_out_in.contiguous()
    x0 = xs[0]
    device = x0.device
    numel, T, S = x0.numel(), len(kinds), len(xs)
    bn_rank = _bn_rank(kinds)
    bn_terms = [t for t, rank in enumerate(bn_rank) if rank >= 0]
    norm_need_grad = norm_need_grad and len(bn_terms) > 0
    grad_xs = {s: torch.empty(x0.shape, dtype=x0.dtype, device=device) for s, need in enumerate(xs_need_grad) if need}
    grad_ys = {s: torch.empty(x0.shape, dtype=x0.dtype, device=device)
               for s, need in enumerate(outputs_need_grad) if need}
    grad_weights = (torch.zeros(T, dtype=weights.dtype, device=weights.device) if weights_need_grad
                    else weights.new_empty((0,)))
    grad_norm = torch.zeros_like(norm, memory_format=torch.contiguous_format) if norm_need_grad else weights.new_empty((0,))
    if numel > 0:
        N, C, H, W = x0.shape
        element, acc, acc_dtype = _types(x0.dtype)
        wt = weights.to(acc_dtype).contiguous()
        nt = _norm_as(norm, acc_dtype)
        a = _node_args(xs, ys, kinds, sources, bn_rank)
        ga = _GradArgs()
        for s in range(S):
            ga.gx[s] = grad_xs[s].data_ptr() if s in grad_xs else None
        for t in range(T):
            gy = grad_ys.get(sources[t]) if _is_output_kind(kinds[t]) else None
            ga.gy[t] = gy.data_ptr() if gy is not None else None
        dot_terms = [t for t in range(T) if kinds[t] != _kind("kNone") and bn_rank[t] < 0] if weights_need_grad else []
        dt = _term_list(dot_terms)
        chunk = c["kDotRowBytes"] // (8 if acc == "double" else 4)  # kDotChunk<Acc>
        blocks = _grid_for(numel, threads, c["kBwdMaxBlocks"])
        if grad_xs or grad_ys:
            _launch(device, _MN, f"{_MN_NS}input_grads_kernel<{element}, {acc}>", _grid_for(numel, threads, cap),
                    threads, [a, ga, _ptr(wt), _ptr(nt), _ptr(grad_out), ctypes.c_int(S), ctypes.c_longlong(numel),
                              ctypes.c_int(C), ctypes.c_int(H), ctypes.c_int(W)])
        partials = torch.empty(max(1, blocks * len(dot_terms)), dtype=acc_dtype, device=device)
        gw = torch.zeros(T, dtype=acc_dtype, device=device)
        if dot_terms:
            rows = (len(dot_terms) + chunk - 1) // chunk
            _launch(device, _MN, f"{_MN_NS}weight_dots_kernel<{element}, {acc}>", (blocks, rows), threads,
                    [a, dt, _ptr(grad_out), _ptr(partials), ctypes.c_longlong(numel), ctypes.c_int(C),
                     ctypes.c_int(H), ctypes.c_int(W)])
            _launch(device, _MN, f"{_MN_NS}sum_partials_kernel<{acc}>", 1, c["kMaxT"],
                    [_ptr(partials), ctypes.c_longlong(blocks), dt, _ptr(gw)])
        B = len(bn_terms)
        if B > 0 and (weights_need_grad or norm_need_grad):
            bt = _term_list(bn_terms)
            planes = N * C
            sums = torch.empty(planes * (B + 1), dtype=acc_dtype, device=device)
            columns = (B + chunk) // chunk
            _launch(device, _MN, f"{_MN_NS}bn_plane_sums_kernel<{element}, {acc}>", (planes, columns), threads,
                    [a, bt, _ptr(grad_out), _ptr(sums), ctypes.c_int(C), ctypes.c_int(H), ctypes.c_int(W)])
            gn = torch.zeros(norm.shape, dtype=acc_dtype, device=device) if norm_need_grad else None
            per_channel = torch.empty(B * C, dtype=acc_dtype, device=device)
            _launch(device, _MN, f"{_MN_NS}bn_channel_kernel<{acc}>", _grid_for(B * C, threads, cap), threads,
                    [bt, _ptr(sums), _ptr(wt), _ptr(nt), ctypes.c_int(N), ctypes.c_int(C), _ptr(per_channel),
                     _ptr(gn)])
            if weights_need_grad:
                _launch(device, _MN, f"{_MN_NS}bn_weight_kernel<{acc}>", B, threads,
                        [bt, _ptr(per_channel), ctypes.c_int(C), _ptr(gw)])
            if norm_need_grad:
                grad_norm = gn.to(norm.dtype)
        if weights_need_grad:
            grad_weights = gw.to(weights.dtype)
    grad_x_list = [_in_layout_of(grad_xs[s], xs_in[s]) for s in sorted(grad_xs)]
    grad_y_list = [_in_layout_of(grad_ys[s], outputs_in[s]) for s in sorted(grad_ys)]
    return grad_x_list, grad_y_list, grad_weights, grad_norm


# ---- pool_stats -----------------------------------------------------------------------------

_PS = "pool_stats.cuh"
_PS_NS = "gaea_kernels::pool_stats::"


class _XPlanes(ctypes.Structure):
    _fields_ = [("n_stride", ctypes.c_longlong), ("c_stride", ctypes.c_longlong), ("cell_stride", ctypes.c_longlong),
                ("C", ctypes.c_int)]


def _x_planes(x: torch.Tensor) -> _XPlanes:
    return _XPlanes(*_plane_strides(x), x.shape[1])


def _readable(x: torch.Tensor, kind: int) -> torch.Tensor:
    """x as the kernels read it: kTensorBN (the identity) in place when its planes are even."""
    return x if kind == _kind("kTensorBN") and _has_even_planes(x) else x.contiguous()


def pool_stats(x_in: torch.Tensor, kind: int) -> torch.Tensor:
    """gaea_ext::pool_stats (mirror of pool_stats_cuda)."""
    c = header_constants(_PS)
    threads = c["kThreads"]
    x = _readable(x_in, kind)
    N, C, H, W = x.shape
    element, acc, acc_dtype = _types(x.dtype)
    stats = torch.empty((2, C), dtype=acc_dtype, device=x.device)
    if x.numel() == 0:
        return stats.fill_(float("nan"))
    planes = N * C
    moments = torch.empty((2, planes), dtype=torch.float64, device=x.device)
    _launch(x.device, _PS, f"{_PS_NS}plane_moments_kernel<{element}, {acc}>", planes, threads,
            [_ptr(x), _x_planes(x), ctypes.c_int(kind), ctypes.c_int(H), ctypes.c_int(W), _ptr(moments),
             _ptr(moments, planes)])
    _launch(x.device, _PS, f"{_PS_NS}merge_planes_kernel<{acc}>", (C + threads - 1) // threads, threads,
            [_ptr(moments), _ptr(moments, planes), ctypes.c_int(N), ctypes.c_int(C), ctypes.c_int(H * W),
             _ptr(stats)])
    return stats


def pool_stats_backward(grad_stats: torch.Tensor, x_in: torch.Tensor, stats: torch.Tensor, kind: int):
    """gaea_ext::pool_stats_backward (mirror of pool_stats_backward_cuda)."""
    c = header_constants(_PS)
    threads = c["kThreads"]
    x = _readable(x_in, kind)
    # The identity writes grad_x in its final layout; the pools write contiguous planes.
    grad_x = (_empty_in_layout_of(x_in) if kind == _kind("kTensorBN")
              else torch.empty(x.shape, dtype=x.dtype, device=x.device))
    numel = x.numel()
    if numel == 0:
        return _in_layout_of(grad_x, x_in)
    N, C, H, W = x.shape
    element, acc, acc_dtype = _types(x.dtype)
    gs = grad_stats.to(acc_dtype).contiguous()
    st = stats.to(acc_dtype).contiguous()
    # acc_t(1) / static_cast<acc_t>(N * H * W), rounded in the accumulation type as in C++
    inv_m = float(torch.tensor(1.0, dtype=acc_dtype) / torch.tensor(float(N * H * W), dtype=acc_dtype))
    _launch(x.device, _PS, f"{_PS_NS}pool_stats_backward_kernel<{element}, {acc}>",
            _grid_for(numel, threads, c["kMaxGrid"]), threads,
            [_ptr(x), _x_planes(x), _ptr(gs), _ptr(st), ctypes.c_int(kind), _acc_scalar(acc, inv_m),
             ctypes.c_longlong(numel), ctypes.c_int(C), ctypes.c_int(H), ctypes.c_int(W), _ptr(grad_x),
             _x_planes(grad_x)])
    return _in_layout_of(grad_x, x_in)


# ---- partial_channel_node -------------------------------------------------------------------

_PC = "partial_channel.cuh"
_PC_NS = "gaea_kernels::partial_channel::"


class _States(ctypes.Structure):
    _E = header_constants(_PC)["kMaxStates"]
    _fields_ = [("x", ctypes.c_void_p * _E), ("H", ctypes.c_int * _E), ("W", ctypes.c_int * _E),
                ("stride", ctypes.c_int * _E), ("E", ctypes.c_int)]


def _states_args(states: List[torch.Tensor], strides: Sequence[int]) -> _States:
    s = _States()
    s.E = len(states)
    for e, state in enumerate(states):
        s.x[e] = state.data_ptr()
        s.H[e], s.W[e], s.stride[e] = state.shape[2], state.shape[3], strides[e]
    return s


def _check_pc_limits(states) -> None:
    limit = header_constants(_PC)["kMaxStates"]
    if len(states) > limit:
        raise ValueError(f"partial_channel_node (CUDA): at most {limit} states per call, got {len(states)}")


def partial_channel_node(mixed_in, states_in, weights, strides, groups) -> torch.Tensor:
    """gaea_ext::partial_channel_node (mirror of partial_channel_node_cuda)."""
    _check_pc_limits(states_in)
    c = header_constants(_PC)
    threads = c["kThreads"]
    mixed = mixed_in.contiguous()
    states = [s.contiguous() for s in states_in]
    N, C, q, Ho, Wo = mixed.shape[0], states[0].shape[1], states[0].shape[1] // groups, mixed.shape[2], mixed.shape[3]
    out = torch.empty((N, C, Ho, Wo), dtype=mixed.dtype, device=mixed.device)
    numel = out.numel()
    if numel == 0:
        return _in_layout_of(out, mixed_in)
    element, acc, acc_dtype = _types(mixed.dtype)
    wt = weights.to(acc_dtype).contiguous()
    _launch(mixed.device, _PC, f"{_PC_NS}pc_forward_kernel<{element}, {acc}>", _grid_for(numel, threads, c["kMaxGrid"]),
            threads, [_ptr(mixed), _states_args(states, strides), _ptr(wt), _ptr(out), ctypes.c_longlong(numel),
                      ctypes.c_int(C), ctypes.c_int(groups), ctypes.c_int(q), ctypes.c_int(Ho), ctypes.c_int(Wo)])
    return _in_layout_of(out, mixed_in)


def partial_channel_node_backward(grad_out_in, states_in, weights, strides, groups, mixed_need_grad,
                                  states_need_grad, weights_need_grad):
    """gaea_ext::partial_channel_node_backward (mirror of partial_channel_node_backward_cuda)."""
    _check_pc_limits(states_in)
    c = header_constants(_PC)
    threads, cap = c["kThreads"], c["kMaxGrid"]
    grad_out = grad_out_in.contiguous()
    states = [s.contiguous() for s in states_in]
    device = grad_out.device
    N, C, Ho, Wo = grad_out.shape[0], states[0].shape[1], grad_out.shape[2], grad_out.shape[3]
    q, E = C // groups, len(states)
    grad_mixed = (torch.empty((N, q, Ho, Wo), dtype=grad_out.dtype, device=device) if mixed_need_grad
                  else grad_out.new_empty((0,)))
    grad_states = {e: torch.empty(states[e].shape, dtype=states[e].dtype, device=device)
                   for e, need in enumerate(states_need_grad) if need}
    grad_weights = (torch.zeros(E, dtype=weights.dtype, device=weights.device) if weights_need_grad
                    else weights.new_empty((0,)))
    element, acc, acc_dtype = _types(grad_out.dtype)
    wt = weights.to(acc_dtype).contiguous()
    if mixed_need_grad and grad_mixed.numel() > 0:
        _launch(device, _PC, f"{_PC_NS}pc_grad_mixed_kernel<{element}>", _grid_for(grad_mixed.numel(), threads, cap),
                threads, [_ptr(grad_out), _ptr(grad_mixed), ctypes.c_longlong(grad_mixed.numel()), ctypes.c_int(C),
                          ctypes.c_int(groups), ctypes.c_int(q), ctypes.c_longlong(Ho * Wo)])
    for e in range(E):
        gx = grad_states.get(e)
        if gx is None or gx.numel() == 0:
            continue
        _launch(device, _PC, f"{_PC_NS}pc_grad_state_kernel<{element}, {acc}>", _grid_for(gx.numel(), threads, cap),
                threads, [_ptr(grad_out), _ptr(states[e]), _ptr(wt), ctypes.c_int(e), ctypes.c_int(strides[e]),
                          _ptr(gx), ctypes.c_longlong(gx.numel()), ctypes.c_int(C), ctypes.c_int(groups),
                          ctypes.c_int(q), ctypes.c_int(states[e].shape[2]), ctypes.c_int(states[e].shape[3]),
                          ctypes.c_int(Ho), ctypes.c_int(Wo)])
    bypass_numel = N * (C - q) * Ho * Wo
    if weights_need_grad and bypass_numel > 0:
        blocks = _grid_for(bypass_numel, threads, c["kMaxBlocks"])
        partials = torch.empty(blocks * E, dtype=acc_dtype, device=device)
        _launch(device, _PC, f"{_PC_NS}pc_grad_weights_kernel<{element}, {acc}>", blocks, threads,
                [_ptr(grad_out), _states_args(states, strides), _ptr(partials), ctypes.c_longlong(bypass_numel),
                 ctypes.c_int(C), ctypes.c_int(groups), ctypes.c_int(q), ctypes.c_int(Ho), ctypes.c_int(Wo)])
        gw = torch.empty(E, dtype=acc_dtype, device=device)
        _launch(device, _PC, f"{_PC_NS}pc_sum_partials_kernel<{acc}>", 1, c["kMaxStates"],
                [_ptr(partials), ctypes.c_longlong(blocks), ctypes.c_int(E), _ptr(gw)])
        grad_weights = gw.to(weights.dtype)
    if mixed_need_grad:
        grad_mixed = _in_layout_of(grad_mixed, grad_out_in)
    grad_list = [_in_layout_of(grad_states[e], states_in[e]) for e in sorted(grad_states)]
    return grad_mixed, grad_list, grad_weights


# ---- registration ---------------------------------------------------------------------------

LAUNCHERS = {
    "weighted_sum": weighted_sum,
    "weighted_sum_backward": weighted_sum_backward,
    "sample_weighted_sum": sample_weighted_sum,
    "sample_weighted_sum_backward": sample_weighted_sum_backward,
    "exp_grad_step_": exp_grad_step_,
    "pool_stats": pool_stats,
    "pool_stats_backward": pool_stats_backward,
    "partial_channel_node": partial_channel_node,
    "partial_channel_node_backward": partial_channel_node_backward,
    "mixed_node": mixed_node,
    "mixed_node_backward": mixed_node_backward,
}


def register(dispatch_key: str = "CUDA") -> torch.library.Library:
    """Register the launchers as the `dispatch_key` implementations of the gaea_ext ops (over
    any compiled ones). They last as long as the returned library lives."""
    import warnings

    library = torch.library.Library("gaea_ext", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for name, launcher in LAUNCHERS.items():
            library.impl(name, launcher, dispatch_key)
    return library


def versions() -> Dict[str, Optional[str]]:
    """cupy's and NVRTC's versions (None where missing) and the cubin cache directory."""
    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    try:
        nvrtc_version = nvrtc.nvrtc_version()
    except Exception:  # noqa: BLE001  (no NVRTC library: reported as missing)
        nvrtc_version = None
    return {"cupy_version": cupy_version, "nvrtc_version": nvrtc_version, "nvrtc_cache_dir": str(nvrtc.cache_dir())}
