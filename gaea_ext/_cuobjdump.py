"""Per-kernel resource usage (registers, stack, shared memory) of compiled CUDA device code,
read with `cuobjdump --dump-resource-usage`; no GPU needed. Used by
benchmarks/kernel_resources.py (the nvcc build) and gaea_ext.nvrtc (the NVRTC cubins)."""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

MAX_STACK_BYTES = 16


@dataclass
class KernelUsage:
    """One kernel's resources for one architecture, as cuobjdump reports them."""
    arch: str
    name: str  # demangled where c++filt is available (unless asked for the mangled name)
    registers: int
    stack: int
    shared: int
    local: int

    @property
    def is_double(self):
        return re.search(r"\bdouble\b", self.name) is not None


def find_cuobjdump():
    """cuobjdump from PATH, $CUDA_HOME/bin, or the copy bundled with triton (installed with
    CUDA builds of torch); None if there is none."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and os.access(os.path.join(cuda_home, "bin", "cuobjdump"), os.X_OK):
        return os.path.join(cuda_home, "bin", "cuobjdump")
    try:
        import triton.backends.nvidia as nvidia_backend
    except ImportError:
        return None
    bundled = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "cuobjdump")
    return bundled if os.access(bundled, os.X_OK) else None


def demangle(names):
    """Demangled names (unchanged where c++filt is missing)."""
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return list(names)
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else list(names)


def parse_resource_usage(text, demangled=True):
    """KernelUsage rows from `cuobjdump --dump-resource-usage` output."""
    rows, arch, function = [], None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function "):
            function = line[len("Function "):].rstrip(":")
        elif line.startswith("REG:") and function is not None:
            fields = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", line))
            rows.append(KernelUsage(arch, function, int(fields["REG"]), int(fields["STACK"]),
                                    int(fields["SHARED"]), int(fields["LOCAL"])))
            function = None
    if demangled:
        for row, name in zip(rows, demangle([r.name for r in rows])):
            row.name = name
    return rows


def kernel_usage(so_path, cuobjdump=None, demangled=True):
    """Resource usage of every kernel in a binary holding device code (an extension or a
    cubin); empty when it holds none. `demangled=False` keeps the mangled names."""
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (PATH, $CUDA_HOME/bin, triton's copy)")
    proc = subprocess.run([cuobjdump, "--dump-resource-usage", so_path], capture_output=True, text=True)
    if proc.returncode != 0:
        if "does not contain device code" in proc.stderr + proc.stdout:
            return []
        raise RuntimeError(f"cuobjdump failed on {so_path}: {proc.stderr.strip()}")
    return parse_resource_usage(proc.stdout, demangled)


def stack_violations(rows, max_stack=MAX_STACK_BYTES):
    """Kernels other than double instantiations with more than `max_stack` bytes of stack, or
    with local memory."""
    return [r for r in rows if not r.is_double and (r.stack > max_stack or r.local > 0)]
