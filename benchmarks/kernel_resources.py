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
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # gaea_ext of this tree, also when run as a script

from gaea_ext._cuobjdump import (  # noqa: E402  (re-exported for the tests)
    MAX_STACK_BYTES, KernelUsage, demangle, find_cuobjdump, kernel_usage, parse_resource_usage, stack_violations)


def extension_path():
    """The built gaea_ext extension in the source tree."""
    paths = sorted(glob.glob(str(ROOT / "gaea_ext" / "_C*.so")))
    if not paths:
        raise FileNotFoundError("no gaea_ext/_C*.so: build the extension first (make build)")
    return paths[0]


def short_name(name):
    """`void gaea_kernels::op::k<float, float>(...)` -> `k<float, float>`."""
    name = re.sub(r"^void ", "", name).replace("gaea_ext::(anonymous namespace)::", "")
    name = re.sub(r"gaea_kernels::(\w+::)?", "", name)
    name = name.replace("c10::", "").replace("gaea_ext::", "")
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut the parameter list after the template arguments
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            end = i
            break
    return name[:end]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", help="extension to read (default: gaea_ext/_C*.so of this tree)")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if a non-double kernel has over {MAX_STACK_BYTES} B of stack")
    args = parser.parse_args(argv)
    rows = kernel_usage(args.so or extension_path())
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
