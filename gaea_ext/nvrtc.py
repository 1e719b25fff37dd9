"""Run-time compilation of the CUDA kernels with NVRTC, without nvcc and without a GPU.

The device code of every op lives in a torch-free header (csrc/kernels/<op>.cuh, shipped as
the package data `gaea_ext.kernels`). KERNELS lists, per header, every kernel template
instantiation the launchers use, as NVRTC name expressions (`gaea_kernels::op::k<__half,
float>`). compile_header() compiles one header for one architecture through cupy's low-level
NVRTC bindings (no GPU needed) and caches the cubin under cache_dir(), keyed by the header's
source (with the headers it includes), the architecture and the NVRTC version.

    python -m gaea_ext.nvrtc --arch sm_90          # compile every kernel; registers and stack
    python -m gaea_ext.nvrtc --arch sm_80 --check  # exit 1 if a non-double kernel keeps an
                                                   # array on its stack (over 16 B, as for nvcc)

The cupy backend (gaea_ext/cupy_backend.py) loads these cubins and launches them.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

# Element type -> (NVRTC element type, accumulation type). The nvcc launchers instantiate the
# same kernels with c10::Half / c10::BFloat16, which have the same layout.
DTYPES = {
    "float16": ("__half", "float"),
    "bfloat16": ("__nv_bfloat16", "float"),
    "float32": ("float", "float"),
    "float64": ("double", "double"),
}
_SIZES = {"__half": 2, "__nv_bfloat16": 2, "float": 4, "double": 8}
_ACC_TYPES = ("float", "double")
# Always in front of a header: the half types (NVRTC finds them in the CUDA include dir).
PRELUDE = "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def vector_width(element: str) -> int:
    """Elements per 16-byte access of weighted_sum's and sample_weighted_sum's vector paths."""
    return 16 // _SIZES[element]


def _streaming_sum(ns: str, forward: str, backward: str, reduce: str) -> List[str]:
    """The instantiations of a weighted_sum-style op: the forward <T, Acc, Out, VEC> writing the
    element type or (between input groups) the accumulation type, the backward <T, Acc, VEC>,
    each with the 16-byte vector width and the scalar path, and the partials' reduce <Acc>."""
    out = []
    for t, acc in DTYPES.values():
        for vec in (vector_width(t), 1):
            for dest in dict.fromkeys((t, acc)):
                out.append(f"{ns}{forward}<{t}, {acc}, {dest}, {vec}>")
            out.append(f"{ns}{backward}<{t}, {acc}, {vec}>")
    out += [f"{ns}{reduce}<{acc}>" for acc in _ACC_TYPES]
    return out


def _per_dtype(ns: str, element_kernels, acc_kernels=(), element_only=()) -> List[str]:
    out = [f"{ns}{k}<{t}, {acc}>" for t, acc in DTYPES.values() for k in element_kernels]
    out += [f"{ns}{k}<{t}>" for t, _ in DTYPES.values() for k in element_only]
    out += [f"{ns}{k}<{acc}>" for acc in _ACC_TYPES for k in acc_kernels]
    return out


# header -> every kernel instantiation the launchers use.
KERNELS: Dict[str, List[str]] = {
    "weighted_sum.cuh": _streaming_sum("gaea_kernels::weighted_sum::", "weighted_sum_kernel",
                                       "weighted_sum_backward_kernel", "reduce_partials_kernel"),
    "sample_weighted_sum.cuh": _streaming_sum(
        "gaea_kernels::", "sample_weighted_sum_kernel", "sample_weighted_sum_backward_kernel",
        "sample_weighted_sum_reduce_kernel"),
    "exp_grad.cuh": _per_dtype("gaea_kernels::exp_grad::",
                               ["exp_grad_fused_kernel", "exp_grad_inspect_kernel", "exp_grad_step_kernel"]),
    "pool_stats.cuh": _per_dtype("gaea_kernels::pool_stats::", ["plane_moments_kernel", "pool_stats_backward_kernel"],
                                 acc_kernels=["merge_planes_kernel"]),
    "partial_channel.cuh": _per_dtype(
        "gaea_kernels::partial_channel::",
        ["pc_forward_kernel", "pc_grad_state_kernel", "pc_grad_weights_kernel"],
        acc_kernels=["pc_sum_partials_kernel"], element_only=["pc_grad_mixed_kernel"]),
    "mixed_node.cuh": _per_dtype(
        "gaea_kernels::mixed_node::",
        ["mixed_node_kernel", "input_grads_kernel", "weight_dots_kernel", "bn_plane_sums_kernel"],
        acc_kernels=["sum_partials_kernel", "bn_channel_kernel", "bn_weight_kernel"]),
}


def kernel_dir():
    """The kernel headers: csrc/kernels of the source tree this package lies in (a checkout,
    editable or on sys.path), else the installed package data `gaea_ext.kernels` (an
    importlib.resources Traversable)."""
    source = Path(__file__).resolve().parent.parent / "csrc" / "kernels"
    if (source / "limits.cuh").is_file():
        return source
    try:
        from importlib.resources import files

        installed = files("gaea_ext.kernels")
        if installed.joinpath("limits.cuh").is_file():
            return installed
    except (ImportError, TypeError, AttributeError):
        pass
    raise FileNotFoundError("gaea_ext: the kernel headers (package data gaea_ext.kernels) are not installed")


def header_text(name: str) -> str:
    """The text of kernel header `name` (e.g. "weighted_sum.cuh")."""
    return kernel_dir().joinpath(name).read_text()


def included_headers(name: str) -> List[str]:
    """`name` and every kernel header it includes, transitively, in first-seen order."""
    seen, todo = [], [name]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        todo += _INCLUDE.findall(header_text(current))
    return seen


def cuda_include_dir() -> str:
    """A CUDA include directory holding cuda_fp16.h: $CUDA_HOME/include, the pip wheels'
    nvidia/cu13 (or cuda_runtime) include, /usr/local/cuda/include or triton's copy."""
    candidates = []
    for env in ("GAEA_EXT_CUDA_INCLUDE", "CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(env)
        if value:
            candidates.append(Path(value) if env == "GAEA_EXT_CUDA_INCLUDE" else Path(value) / "include")
    try:
        import nvidia

        for base in nvidia.__path__:
            candidates += [Path(base) / "cu13" / "include", Path(base) / "cuda_runtime" / "include"]
    except ImportError:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    try:
        import triton.backends.nvidia as triton_nvidia

        candidates.append(Path(triton_nvidia.__file__).parent / "include")
    except ImportError:
        pass
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and (path / "cuda_bf16.h").is_file():
            return str(path)
    raise FileNotFoundError("gaea_ext.nvrtc: no CUDA include directory with cuda_fp16.h found "
                            "(set CUDA_HOME or GAEA_EXT_CUDA_INCLUDE)")


def nvrtc_version() -> str:
    """The NVRTC library's version, e.g. "13.0"."""
    from cupy_backends.cuda.libs import nvrtc

    major, minor = nvrtc.getVersion()
    return f"{major}.{minor}"


def cache_dir() -> Path:
    """Where cubins are cached: $GAEA_EXT_CACHE_DIR, else ~/.cache/gaea_ext/nvrtc."""
    configured = os.environ.get("GAEA_EXT_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "gaea_ext" / "nvrtc"


def _options(arch: str) -> List[str]:
    return [f"--gpu-architecture={arch}", "--std=c++17", "-DGAEA_KERNELS_NVRTC=1"]


def source_key(header: str, arch: str) -> str:
    """Cache key of `header` for `arch`: its text and every header it includes, the
    instantiations, the compile options, the NVRTC version and the half-type headers."""
    include_dir = cuda_include_dir()
    digest = hashlib.sha256()
    for name in included_headers(header):
        digest.update(name.encode() + b"\0" + header_text(name).encode() + b"\0")
    for name in ("cuda_fp16.h", "cuda_bf16.h"):
        digest.update((Path(include_dir) / name).read_bytes())
    digest.update(json.dumps([KERNELS[header], _options(arch), nvrtc_version(), PRELUDE]).encode())
    return digest.hexdigest()[:32]


@dataclass
class CompiledHeader:
    """A header's cubin for one architecture and the lowered (mangled) name of each of its
    name expressions."""
    header: str
    arch: str
    cubin: bytes
    lowered: Dict[str, str]
    path: Path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _get_cubin(program: int) -> bytes:
    """The whole cubin of a compiled program. cupy's getCUBIN drops the last byte (as if it
    were a string's NUL), so the size and the bytes come from the NVRTC library cupy loaded."""
    import ctypes

    major = nvrtc_version().split(".")[0]
    library = ctypes.CDLL(f"libnvrtc.so.{major}")  # the copy already loaded by cupy
    size = ctypes.c_size_t()
    if library.nvrtcGetCUBINSize(ctypes.c_void_p(program), ctypes.byref(size)) != 0:
        raise RuntimeError("gaea_ext.nvrtc: nvrtcGetCUBINSize failed")
    buffer = ctypes.create_string_buffer(size.value)
    if library.nvrtcGetCUBIN(ctypes.c_void_p(program), buffer) != 0:
        raise RuntimeError("gaea_ext.nvrtc: nvrtcGetCUBIN failed")
    return buffer.raw


def _nvrtc_compile(header: str, arch: str):
    """(cubin, {name expression: lowered name}) of `header` compiled for `arch`."""
    from cupy_backends.cuda.libs import nvrtc

    names = [name for name in included_headers(header) if name != header]
    source = PRELUDE + header_text(header)
    program = nvrtc.createProgram(source, header, [header_text(n).encode() for n in names],
                                   [n.encode() for n in names])
    try:
        for expr in KERNELS[header]:
            nvrtc.addNameExpression(program, expr)
        try:
            nvrtc.compileProgram(program, _options(arch) + [f"--include-path={cuda_include_dir()}"])
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise RuntimeError(f"gaea_ext.nvrtc: compiling {header} for {arch} failed:\n{log}") from error
        lowered = {expr: nvrtc.getLoweredName(program, expr) for expr in KERNELS[header]}
        return _get_cubin(program), lowered
    finally:
        nvrtc.destroyProgram(program)


def compile_header(header: str, arch: str, cache: Optional[Path] = None) -> CompiledHeader:
    """The cubin of `header` (a key of KERNELS) for `arch` ("sm_90"), from the cache when there,
    else compiled with NVRTC and written to the cache (atomically: concurrent processes may
    compile the same header, the last rename wins with identical content)."""
    if header not in KERNELS:
        raise KeyError(f"gaea_ext.nvrtc: no kernel table for header {header!r}")
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ValueError(f"gaea_ext.nvrtc: arch must look like 'sm_90', got {arch!r}")
    cache = Path(cache) if cache is not None else cache_dir()
    key = source_key(header, arch)
    stem = f"{Path(header).stem}-{arch}-nvrtc{nvrtc_version().replace('.', '_')}-{key}"
    cubin_path, names_path = cache / (stem + ".cubin"), cache / (stem + ".json")
    if cubin_path.is_file() and names_path.is_file():
        try:
            lowered = json.loads(names_path.read_text())
            if set(lowered) == set(KERNELS[header]):
                return CompiledHeader(header, arch, cubin_path.read_bytes(), lowered, cubin_path)
        except (OSError, ValueError):
            pass  # a damaged entry: compile again and replace it
    cubin, lowered = _nvrtc_compile(header, arch)
    _write_atomic(cubin_path, cubin)
    _write_atomic(names_path, json.dumps(lowered, indent=1).encode())
    return CompiledHeader(header, arch, cubin, lowered, cubin_path)


def compile_all(arch: str, cache: Optional[Path] = None) -> List[CompiledHeader]:
    """Every header of KERNELS compiled for `arch`."""
    return [compile_header(header, arch, cache) for header in KERNELS]


def resource_usage(compiled: CompiledHeader):
    """(name expression, KernelUsage) for every kernel of a compiled header, from cuobjdump."""
    from ._cuobjdump import kernel_usage

    by_lowered = {lowered: expr for expr, lowered in compiled.lowered.items()}
    rows = kernel_usage(str(compiled.path), demangled=False)
    return [(by_lowered.get(row.name, row.name), row) for row in rows]


def _is_double(expr: str) -> bool:
    return re.search(r"\bdouble\b", expr) is not None


def main(argv=None) -> int:
    from ._cuobjdump import MAX_STACK_BYTES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="target architecture (default sm_90)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a float/half/bfloat16 kernel has over MAX_STACK_BYTES (16) of stack "
                             "or any local memory (benchmarks/kernel_resources.py's rule)")
    parser.add_argument("--cache-dir", help="cubin cache (default $GAEA_EXT_CACHE_DIR or ~/.cache/gaea_ext/nvrtc)")
    args = parser.parse_args(argv)
    bad = []
    count = 0
    print(f"NVRTC {nvrtc_version()}, {args.arch}, cache {args.cache_dir or cache_dir()}")
    print(f"{'REG':>4} {'STACK':>6}  kernel")
    for header in KERNELS:
        compiled = compile_header(header, args.arch, Path(args.cache_dir) if args.cache_dir else None)
        for expr, row in resource_usage(compiled):
            count += 1
            print(f"{row.registers:4d} {row.stack:6d}  {expr}")
            if not _is_double(expr) and (row.stack > MAX_STACK_BYTES or row.local > 0):
                bad.append(expr)
    print(f"{count} kernels; {len(bad)} float/half/bfloat16 kernels with over {MAX_STACK_BYTES} B of stack "
          "or local memory")
    for expr in bad:
        print(f"  STACK  {expr}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
