"""Per-kernel resource usage of the compiled CUDA kernels (registers, stack, shared memory),
read from the built extension with `cuobjdump --dump-resource-usage`; no GPU needed.

    python benchmarks/kernel_resources.py            # the table, one row per kernel and arch
    python benchmarks/kernel_resources.py --check    # exit 1 if a kernel keeps arrays on its stack

A stack frame holds spilled registers and runtime-indexed local arrays: per-thread traffic
to local memory (L1, then L2) that a memory-bound kernel cannot afford. `--check` allows every
kernel not instantiated for double at most MAX_STACK_BYTES of stack: a few spilled registers
(ptxas keeps some kernels at 64 registers on sm_80 and spills a word), never an array. The
double instantiations (gradcheck and reference paths) call the ABI's division routines and
are not checked.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_STACK_BYTES = 16


@dataclass
class KernelUsage:
    """One kernel's resources for one architecture, as cuobjdump reports them."""
    arch: str
    name: str  # demangled where c++filt is available
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


def extension_path():
    """The built gaea_ext extension in the source tree."""
    paths = sorted(glob.glob(str(ROOT / "gaea_ext" / "_C*.so")))
    if not paths:
        raise FileNotFoundError("no gaea_ext/_C*.so: build the extension first (make build)")
    return paths[0]


def demangle(names):
    """Demangled names (unchanged where c++filt is missing)."""
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return list(names)
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else list(names)


def parse_resource_usage(text):
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
    for row, name in zip(rows, demangle([r.name for r in rows])):
        row.name = name
    return rows


def kernel_usage(so_path=None, cuobjdump=None):
    """Resource usage of every kernel in the extension (empty for a CPU-only build)."""
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (PATH, $CUDA_HOME/bin, triton's copy)")
    so_path = so_path or extension_path()
    proc = subprocess.run([cuobjdump, "--dump-resource-usage", so_path], capture_output=True, text=True)
    if proc.returncode != 0:
        if "does not contain device code" in proc.stderr + proc.stdout:
            return []
        raise RuntimeError(f"cuobjdump failed on {so_path}: {proc.stderr.strip()}")
    return parse_resource_usage(proc.stdout)


def short_name(name):
    """`void gaea_ext::(anonymous namespace)::k<float, float>(...)` -> `k<float, float>`."""
    name = re.sub(r"^void ", "", name).replace("gaea_ext::(anonymous namespace)::", "")
    name = name.replace("c10::", "").replace("gaea_ext::", "")
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut the parameter list after the template arguments
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            end = i
            break
    return name[:end]


def stack_violations(rows, max_stack=MAX_STACK_BYTES):
    """Kernels other than double instantiations with more than `max_stack` bytes of stack, or
    with local memory."""
    return [r for r in rows if not r.is_double and (r.stack > max_stack or r.local > 0)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", help="extension to read (default: gaea_ext/_C*.so of this tree)")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if a non-double kernel has over {MAX_STACK_BYTES} B of stack")
    args = parser.parse_args(argv)
    rows = kernel_usage(args.so)
    if not rows:
        print("no CUDA kernels in the extension (a CPU-only build)")
        return 1 if args.check else 0
    print(f"{'arch':6} {'REG':>4} {'STACK':>6} {'SHARED':>7}  kernel")
    for r in sorted(rows, key=lambda r: (r.arch, short_name(r.name))):
        print(f"{r.arch:6} {r.registers:4d} {r.stack:6d} {r.shared:7d}  {short_name(r.name)}")
    bad = stack_violations(rows)
    print(f"{len(rows)} kernels; {len(bad)} non-double kernels with over {MAX_STACK_BYTES} B of stack")
    for r in bad:
        print(f"  STACK {r.stack} B  {r.arch}  {short_name(r.name)}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
