"""Build the CUDA kernels of csrc/cuda/ for the CPU emulation (see include/cuda_emulation.h).

Each `.cu` file is translated to C++ by rewriting its launches `kernel<<<grid, block, smem,
stream>>>(args)` as `gaea_emu::launch(gaea_emu::LaunchConfig(grid, block, smem, stream),
kernel, args)`, and its `.is_cuda()` device checks as `.is_cpu()` (the emulated device's
tensors live in host memory); nothing else changes. The translations, runtime.cpp,
csrc/checks.cpp and csrc/host_common.cpp are compiled by the host compiler
(torch.utils.cpp_extension, ninja) with the emulation headers ahead of torch's, and the
library registers the kernels' entry points as `torch.ops.gaea_ext_cuda_emulated.<op>`,
taking CPU tensors. It also holds every kernel of gaea_ext.nvrtc.KERNELS by its NVRTC name
expression (gaea_emu_launch_kernel, a cuLaunchKernel-like C entry point), so the NVRTC
backend's Python launchers run on the CPU too (emulated_launcher() below). The kernels'
headers (csrc/kernels/*.cuh) are found through the include path; ninja's depfiles track them.

    python tests/cuda_emulation/build.py      # build (or reuse) and print the library path

GAEA_CUDA_EMULATION_ASAN=1 builds it with AddressSanitizer (in build/cuda-emulation-asan/):
run with the ASan runtime preloaded (`make test-cuda-emulation-asan`), an out-of-bounds read
or write of a kernel into a tensor fails the test, as compute-sanitizer memcheck would.
"""
import contextlib
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The package's kernels, and the emulation's own self-test kernels.
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [HERE / "selftest_kernels.cu"]
NAMESPACE = "gaea_ext_cuda_emulated"


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression (`name`, `ns::name`, `name<T, 4>`) ending at `end`."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments: match the brackets backwards
        depth = 0
        while i > 0:
            i -= 1
            depth += {">": 1, "<": -1}.get(text[i], 0)
            if depth == 0:
                break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def translate(text: str) -> str:
    """The `.cu` source with every `<<<...>>>(` launch rewritten as a gaea_emu::launch call."""
    out, pos = [], 0
    for m in re.finditer(r"<<<(.*?)>>>\s*\(", text, flags=re.S):
        start = _kernel_start(text, m.start())
        kernel = text[start:m.start()].strip()
        if not kernel:
            raise ValueError(f"no kernel name before the launch at offset {m.start()}")
        rest = text[m.end():]
        sep = "" if rest.lstrip().startswith(")") else ", "
        out.append(text[pos:start])
        newlines = "\n" * text.count("\n", start, m.end())  # keep the .cu line numbers
        out.append(f"::gaea_emu::launch(::gaea_emu::LaunchConfig({' '.join(m.group(1).split())}), {kernel}{sep}{newlines}")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out).replace(".is_cuda()", ".is_cpu()")


# NVRTC's half types -> the nvcc launchers' (same layout; the emulation compiles c10's).
HOST_TYPES = {"__half": "c10::Half", "__nv_bfloat16": "c10::BFloat16"}


def kernel_registry(header: str, expressions) -> str:
    """C++ registering every kernel of `header` by its NVRTC name expression, launched from a
    cuLaunchKernel-style argument array (gaea_emu::launch_packed)."""
    lines = ["#include <c10/util/BFloat16.h>", "#include <c10/util/Half.h>", "",
             f'#include "../kernels/{header}"', "", "namespace {", ""]
    for i, expr in enumerate(expressions):
        host = re.sub(r"\b(__half|__nv_bfloat16)\b", lambda m: HOST_TYPES[m.group(1)], expr)
        lines.append(f'const ::gaea_emu::NamedKernel kernel_{i}("{expr}", [](const ::gaea_emu::LaunchConfig& c, '
                     f"void** args) {{ ::gaea_emu::launch_packed(c, &{host}, args); }});")
    return "\n".join(lines + ["", "}  // namespace", ""])


def build(verbose: bool = False) -> str:
    """Translate, compile and load the emulated kernels; returns the library's path. The ops
    are then `torch.ops.gaea_ext_cuda_emulated.*`. Rebuilds only what changed."""
    import torch
    from torch.utils import cpp_extension

    asan = os.environ.get("GAEA_CUDA_EMULATION_ASAN") == "1"
    default_dir = ROOT / "build" / ("cuda-emulation-asan" if asan else "cuda-emulation")
    build_dir = Path(os.environ.get("GAEA_CUDA_EMULATION_BUILD", default_dir))
    gen_dir = build_dir / "translated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(HERE / "runtime.cpp"), str(ROOT / "csrc" / "checks.cpp"), str(ROOT / "csrc" / "host_common.cpp")]
    for cu in CUDA_SOURCES:
        target = gen_dir / (cu.stem + ".cpp")
        text = f'#line 1 "{cu}"\n' + translate(cu.read_text())
        if not target.exists() or target.read_text() != text:  # keep mtimes for ninja
            target.write_text(text)
        sources.append(str(target))
    from gaea_ext.nvrtc import KERNELS

    for header, expressions in KERNELS.items():  # the by-name table of the NVRTC backend's kernels
        target = gen_dir / f"registry_{Path(header).stem}.cpp"
        text = kernel_registry(header, expressions)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        sources.append(str(target))
    include = HERE / "include"
    flags = ["-O0", "-fvisibility=hidden", "-include", str(include / "cuda_emulation.h"),
             "-Wno-unused-function", "-Wno-unused-variable"]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    path = cpp_extension.load(
        name="gaea_ext_cuda_emulated", sources=sources, extra_cflags=flags,
        extra_include_paths=[str(include), str(ROOT / "csrc" / "cuda")], build_directory=str(build_dir),
        extra_ldflags=["-fsanitize=address"] if asan else [], is_python_module=False, verbose=verbose)
    return path if isinstance(path, str) else str(build_dir / "gaea_ext_cuda_emulated.so")


def ops():
    """`torch.ops.gaea_ext_cuda_emulated`, building and loading the library first if needed."""
    import torch

    torch.ops.load_library(build())
    return getattr(torch.ops, NAMESPACE)


def _with_defaults(emulated_op, real_op):
    """`emulated_op` (schema inferred from C++, no defaults) called the way `real_op`'s CPU
    kernel is: keyword and omitted arguments filled from the real schema."""
    arguments = real_op.default._schema.arguments

    def kernel(*args, **kwargs):
        rest = [kwargs[a.name] if a.name in kwargs else a.default_value for a in arguments[len(args):]]
        return emulated_op(*args, *rest)

    return kernel


@contextlib.contextmanager
def cpu_served_by_cuda_emulation():
    """Within the block, the gaea_ext ops run their emulated CUDA kernels for CPU tensors."""
    import gaea_ext._backend

    library = route_cpu_kernels_to_emulation()
    try:
        yield
    finally:
        library._destroy()  # the CPU kernels serve again
        gaea_ext._backend.CPU_SERVED_BY_CUDA_EMULATION = False


def route_cpu_kernels_to_emulation():
    """Make every gaea_ext op run its emulated CUDA kernel for CPU tensors (so the unit tests,
    written against the references, exercise the CUDA code). Returns the torch.library.Library
    holding the overrides: they last as long as it lives."""
    import warnings

    import torch

    import gaea_ext._backend

    emulated = ops()
    gaea_ext._backend.CPU_SERVED_BY_CUDA_EMULATION = True  # route CPU calls as CUDA ones
    library = torch.library.Library("gaea_ext", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        names = {name for ns, _, name in (q.partition("::") for q in torch._C._dispatch_get_all_op_names())
                 if ns == "gaea_ext"}
        for qualified in torch._C._dispatch_get_all_op_names():
            ns, _, name = qualified.partition("::")
            if ns == NAMESPACE and name in names:  # not the emulation's own ops (selftest, schedule)
                library.impl(name, _with_defaults(getattr(emulated, name), getattr(torch.ops.gaea_ext, name)), "CPU")
    return library


class EmulatedLauncher:
    """gaea_ext.cupy_backend's launcher on the emulation: launches the emulated kernel of the
    same NVRTC name expression with the same grid, block, shared memory and kernelParams
    array (the tensors are CPU tensors, so their pointers are host memory)."""

    # The emulated device's multiprocessors (include/cuda_runtime.h's cudaDeviceGetAttribute).
    MULTIPROCESSORS = 4

    def __init__(self, path: str):
        import ctypes

        self._library = ctypes.CDLL(path)
        self._launch = self._library.gaea_emu_launch_kernel
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p]
        self._library.gaea_emu_last_error.restype = ctypes.c_char_p

    def multiprocessor_count(self, device) -> int:
        return self.MULTIPROCESSORS

    def launch(self, device, header, expr, grid, block, shared_bytes, params) -> None:
        import ctypes

        if self._launch(expr.encode(), *grid, *block, shared_bytes, ctypes.addressof(params)) != 0:
            raise RuntimeError(self._library.gaea_emu_last_error().decode())


def route_cpu_kernels_to_cupy_launchers():
    """Make every gaea_ext op run gaea_ext.cupy_backend's Python launcher for CPU tensors,
    its kernels launched on the emulation by name (EmulatedLauncher): the NVRTC backend's
    launch path, tested without a GPU. Returns the torch.library.Library holding the
    overrides."""
    import gaea_ext._backend
    from gaea_ext import cupy_backend

    path = build()
    cupy_backend.set_launcher(EmulatedLauncher(path))
    gaea_ext._backend.CPU_SERVED_BY_CUDA_EMULATION = True  # route CPU calls as CUDA ones
    return cupy_backend.register("CPU")


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv))
