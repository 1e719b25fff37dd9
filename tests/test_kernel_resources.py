"""The compiled CUDA kernels' resources (benchmarks/kernel_resources.py): no kernel of the
float, half or bfloat16 paths keeps an array in local memory (a stack frame), read from the
built extension with cuobjdump, so it is checked without a GPU."""
import importlib.util
from pathlib import Path

import pytest

import gaea_ext

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kernel_resources", ROOT / "benchmarks" / "kernel_resources.py")
kernel_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_resources)

SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN8gaea_ext12_GLOBAL__N_16kernelIfEEvPT_:
  REG:63 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:3360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN8gaea_ext12_GLOBAL__N_16kernelIdEEvPT_:
  REG:80 STACK:48 SHARED:2048 LOCAL:0 CONSTANT[0]:3360 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN8gaea_ext12_GLOBAL__N_17spilledIfEEvPT_:
  REG:60 STACK:256 SHARED:1024 LOCAL:0 CONSTANT[0]:3360 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parses_cuobjdump_resource_usage():
    rows = kernel_resources.parse_resource_usage(SAMPLE)
    assert [(r.arch, r.registers, r.stack, r.shared) for r in rows] == [
        ("sm_90", 63, 0, 1024), ("sm_90", 80, 48, 2048), ("sm_90", 60, 256, 1024)]
    if rows[0].name.startswith("void"):  # demangled (c++filt present)
        assert kernel_resources.short_name(rows[0].name) == "kernel<float>"
    assert [r.is_double for r in rows] == [False, True, False]


def test_flags_stack_arrays_but_not_double_or_a_spilled_word():
    rows = kernel_resources.parse_resource_usage(SAMPLE)
    bad = kernel_resources.stack_violations(rows)
    assert [r.stack for r in bad] == [256]  # the double kernel's 48 B ABI frame is allowed
    rows[0].stack = kernel_resources.MAX_STACK_BYTES
    assert len(kernel_resources.stack_violations(rows)) == 1


def _built_kernels():
    if not (gaea_ext.HAS_EXTENSION and gaea_ext.build_info()["cuda"]):
        pytest.skip("the extension is not built with its CUDA kernels")
    if kernel_resources.find_cuobjdump() is None:
        pytest.skip("no cuobjdump (PATH, $CUDA_HOME/bin or triton's copy)")
    return kernel_resources.kernel_usage(gaea_ext._C.__file__)


def test_built_kernels_keep_no_arrays_in_local_memory():
    rows = _built_kernels()
    names = {kernel_resources.short_name(r.name).split("<")[0] for r in rows}
    for kernel in ("weighted_sum_kernel", "input_grads_kernel", "weight_dots_kernel", "pc_grad_weights_kernel",
                   "exp_grad_fused_kernel", "pool_stats_backward_kernel"):
        assert kernel in names, f"{kernel} is missing from the build: {sorted(names)}"
    bad = kernel_resources.stack_violations(rows)
    assert not bad, "kernels with a stack frame: " + ", ".join(
        f"{r.arch} {kernel_resources.short_name(r.name)} ({r.stack} B)" for r in bad)
