"""The NVRTC backend without a GPU: every kernel of gaea_ext.nvrtc.KERNELS compiles for sm_80
and sm_90 (registers and stack read back with cuobjdump), the cubin cache, the constants the
Python launchers read from the headers, and the op schemas defined from Python for a
pure-Python install. The launchers themselves run under the CPU emulation
(GAEA_CUDA_EMULATION=1 GAEA_EXT_BACKEND=cupy, `make test-cuda-emulation`)."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaea_ext
from gaea_ext import _cuobjdump, _schemas, cupy_backend, nvrtc

ROOT = Path(__file__).resolve().parents[1]
HAS_NVRTC = importlib.util.find_spec("cupy_backends") is not None
requires_nvrtc = pytest.mark.skipif(not HAS_NVRTC, reason="cupy (NVRTC bindings) is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nvrtc-cache")


@requires_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_without_stack(arch, cache):
    cuobjdump = _cuobjdump.find_cuobjdump()
    for header, expressions in nvrtc.KERNELS.items():
        compiled = nvrtc.compile_header(header, arch, cache)
        assert set(compiled.lowered) == set(expressions), header
        assert compiled.cubin[:4] == b"\x7fELF" and compiled.path.read_bytes() == compiled.cubin
        if cuobjdump is None:
            continue
        usage = dict(nvrtc.resource_usage(compiled))
        assert set(usage) == set(expressions), header  # every instantiation is in the cubin
        for expr, row in usage.items():
            assert row.registers > 0, expr
            if not re.search(r"\bdouble\b", expr):
                assert row.stack <= _cuobjdump.MAX_STACK_BYTES and row.local == 0, (arch, expr, row)


@requires_nvrtc
def test_cache_is_reused_and_keyed_by_the_source(cache, monkeypatch):
    first = nvrtc.compile_header("pool_stats.cuh", "sm_90", cache)

    def no_compile(*args):
        raise AssertionError("compiled again although the cache holds the cubin")

    monkeypatch.setattr(nvrtc, "_nvrtc_compile", no_compile)
    again = nvrtc.compile_header("pool_stats.cuh", "sm_90", cache)
    assert again.cubin == first.cubin and again.lowered == first.lowered
    # An included header is part of the key: another pool_windows.cuh, another cache entry.
    original = nvrtc.header_text
    monkeypatch.setattr(nvrtc, "header_text",
                        lambda name: original(name) + ("\n// changed\n" if name == "pool_windows.cuh" else ""))
    assert nvrtc.source_key("pool_stats.cuh", "sm_90") != first.path.stem.rsplit("-", 1)[1]
    with pytest.raises(AssertionError, match="compiled again"):
        nvrtc.compile_header("pool_stats.cuh", "sm_90", cache)
    assert not list(cache.glob("*.tmp"))  # atomic writes leave no temporaries


def test_headers_are_torch_free():
    for path in sorted((ROOT / "csrc" / "kernels").glob("*.cuh")):
        includes = re.findall(r'#\s*include\s+([<"][^>"]+[>"])', path.read_text())
        assert all(inc.startswith('"') and inc.endswith('.cuh"') for inc in includes), (path.name, includes)


def test_every_kernel_header_is_in_the_table():
    """Every __global__ kernel of csrc/kernels is instantiated in gaea_ext.nvrtc.KERNELS, so
    the NVRTC backend (and this file's compile test) cover every op's device code."""
    for path in sorted((ROOT / "csrc" / "kernels").glob("*.cuh")):
        kernels = re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", path.read_text())
        if not kernels:
            continue
        assert path.name in nvrtc.KERNELS, path.name
        instantiated = {re.match(r"[\w:]*?(\w+)<", expr).group(1) for expr in nvrtc.KERNELS[path.name]}
        assert set(kernels) == instantiated, path.name


def test_every_op_has_a_launcher():
    assert set(cupy_backend.LAUNCHERS) == set(_schemas.SCHEMAS)


def test_launch_constants_are_the_compiled_limits():
    if not gaea_ext.HAS_EXTENSION:
        pytest.skip("compares with the compiled extension's limits")
    assert cupy_backend.cuda_limits() == gaea_ext.cuda_limits()
    assert cupy_backend.header_constants("weighted_sum.cuh")["kBwdChunk"] == 256 * 8


def test_launch_structs_have_the_c_layout():
    c = cupy_backend.header_constants("exp_grad.cuh")
    p, s = c["kMaxTensorsPerLaunch"], c["kMaxSegments"]
    # param, grad, numel, row and 4 doubles per tensor; seg_first, seg_count; seg_start; count + padding
    assert cupy_backend.ctypes.sizeof(cupy_backend._TensorBatch) == 8 * 8 * p + 2 * 4 * p + 8 * s + 8


def test_python_schemas_equal_the_registered_ones():
    """One Python schema per op of gaea_ext._C (csrc/registration.cpp), equal to it."""
    if not gaea_ext.HAS_EXTENSION:
        pytest.skip("compares with the schemas of gaea_ext._C")
    registered_ops = {name for ns, _, name in (q.partition("::") for q in torch._C._dispatch_get_all_op_names())
                      if ns == "gaea_ext"}
    assert registered_ops == set(_schemas.SCHEMAS)
    for name, schema in _schemas.SCHEMAS.items():
        registered = getattr(torch.ops.gaea_ext, name).default._schema
        assert str(torch._C.parse_schema("gaea_ext::" + schema)) == str(registered), name


def test_pure_python_install_defines_the_ops():
    """Without gaea_ext._C: the schemas come from Python, the fakes register, CUDA tensors
    go to the NVRTC backend and CPU ones to the references."""
    code = (
        "import sys, json, warnings\n"
        "sys.modules['gaea_ext._C'] = None\n"
        "warnings.simplefilter('ignore')\n"
        "import torch, gaea_ext\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    x = torch.empty(2, 3, device='cuda')\n"
        "    out = torch.ops.gaea_ext.weighted_sum([x, x], torch.empty(2, device='cuda'))\n"
        "info = gaea_ext.build_info()\n"
        "print(json.dumps([gaea_ext.HAS_EXTENSION, list(out.shape), gaea_ext.backend('cpu'),\n"
        "                  gaea_ext.backend('cuda'), info['cupy_version'], info['nvrtc_cache_dir']]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "GAEA_EXT_CACHE_DIR": "/nonexistent/cache"})
    assert res.returncode == 0, res.stderr
    has, shape, cpu, cuda, cupy_version, cache_dir = json.loads(res.stdout.strip().splitlines()[-1])
    assert has is False and shape == [2, 3] and cpu == "reference"
    assert cuda == ("cupy" if HAS_NVRTC else "reference")
    assert cache_dir == ("/nonexistent/cache" if HAS_NVRTC else None)
    assert (cupy_version is not None) == HAS_NVRTC


def test_emulated_launch_path_runs_the_python_launchers(monkeypatch):
    """Under GAEA_CUDA_EMULATION=1 GAEA_EXT_BACKEND=cupy the CPU ops are the Python launchers,
    whose launches reach the emulated kernels by name (and their results the references)."""
    if gaea_ext.backend("cpu") != "cupy":
        pytest.skip("runs under GAEA_CUDA_EMULATION=1 GAEA_EXT_BACKEND=cupy")
    launcher = cupy_backend._launcher()
    launch = launcher.launch
    launched = []

    def recording(device, header, expr, *args):
        launched.append(expr)
        return launch(device, header, expr, *args)

    monkeypatch.setattr(launcher, "launch", recording)
    xs = [torch.randn(36, dtype=torch.float16)[1:] for _ in range(3)]  # 2 bytes off 16: the scalar path
    w = torch.randn(3)
    out = gaea_ext.weighted_sum(xs, w)
    assert launched == ["gaea_kernels::weighted_sum::weighted_sum_kernel<__half, float, __half, 1>"]
    launched.clear()
    ys = [torch.randn(64, dtype=torch.float64) for _ in range(2)]
    gaea_ext.weighted_sum(ys, torch.randn(2, dtype=torch.float64))
    assert launched == ["gaea_kernels::weighted_sum::weighted_sum_kernel<double, double, double, 2>"]
    torch.testing.assert_close(out, gaea_ext.reference.weighted_sum(xs, w), atol=2e-3, rtol=2e-3)
    launched.clear()
    zs = [torch.randn(2, 3, 5, dtype=torch.float16) for _ in range(2)]  # 15 per sample: the scalar path
    gaea_ext.sample_weighted_sum(zs, torch.randn(2, 2))
    vs = [torch.randn(2, 4, 4, dtype=torch.float32) for _ in range(2)]
    gaea_ext.sample_weighted_sum(vs, torch.randn(2, 2))
    assert launched == ["gaea_kernels::sample_weighted_sum_kernel<__half, float, __half, 1>",
                        "gaea_kernels::sample_weighted_sum_kernel<float, float, float, 4>"]
    with pytest.raises(RuntimeError, match="no kernel named"):
        launcher.launch(torch.device("cpu"), "weighted_sum.cuh", "gaea_kernels::no_such_kernel<float>",
                        (1, 1, 1), (1, 1, 1), 0, (cupy_backend.ctypes.c_void_p * 0)())
