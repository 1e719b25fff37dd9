"""build_info(), backend(), cuda_limits(), the routing to the reference, HAS_EXTENSION, the
GAEA_EXT_BACKEND=reference override, and that the test suite refuses to run on the
references unless asked to."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaea_ext
import gaea_ext._backend
from conftest import requires_kernels
from gaea_ext._backend import use_reference

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"cuda", "cupy", "cpu", "reference"}


def run_python(code, **env):
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.pop("GAEA_EXT_BACKEND", None)
    full_env.update(env)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def test_has_extension_is_bool():
    assert isinstance(gaea_ext.HAS_EXTENSION, bool)


def test_build_info_keys_and_types():
    info = gaea_ext.build_info()
    assert isinstance(info, dict)
    want = {"cuda", "cuda_version", "cuda_arch_list", "torch_version", "compiler", "cpu_kernels"}
    assert want <= set(info), f"missing keys: {want - set(info)}"
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cpu_kernels"], bool)
    if gaea_ext.HAS_EXTENSION:
        assert isinstance(info["torch_version"], str) and info["torch_version"]
        assert isinstance(info["compiler"], str)
    for key in ("cuda_version", "cuda_arch_list"):
        assert info[key] is None or isinstance(info[key], str)
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_arch_list"]
    if gaea_ext.HAS_EXTENSION:
        assert info["cpu_kernels"] is True
        # built against the torch it runs with (same major.minor)
        assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
    else:
        assert info["cuda"] is False and info["cpu_kernels"] is False


def test_backend_cpu():
    forced = os.environ.get("GAEA_EXT_BACKEND") == "reference"
    want = "cpu" if gaea_ext.HAS_EXTENSION and not forced else "reference"
    assert gaea_ext.backend("cpu") == want
    assert gaea_ext.backend(torch.device("cpu")) == want


def test_backend_cuda():
    got = gaea_ext.backend("cuda")
    assert got in BACKENDS
    assert got != "cpu"
    if got == "cuda":  # the CUDA kernels are compiled in (a GPU need not be present)
        assert gaea_ext.HAS_EXTENSION and gaea_ext.build_info()["cuda"]
    elif got == "cupy":  # NVRTC kernels: chosen without nvcc kernels, or forced
        assert (os.environ.get("GAEA_EXT_BACKEND") == "cupy"
                or not (gaea_ext.HAS_EXTENSION and gaea_ext.build_info()["cuda"]))
    elif (gaea_ext.HAS_EXTENSION and gaea_ext.build_info()["cuda"] and torch.cuda.is_available()
          and os.environ.get("GAEA_EXT_BACKEND") != "reference"):
        pytest.fail("CUDA kernels are built and a GPU is present, but backend('cuda') is " + got)


@requires_kernels
def test_torch_ops_registered():
    for name in ("weighted_sum", "weighted_sum_backward", "exp_grad_step_"):
        assert hasattr(torch.ops.gaea_ext, name), name


def test_env_forces_reference_backend():
    code = (
        "import json, torch, gaea_ext\n"
        "x = [torch.ones(3), 2 * torch.ones(3)]\n"
        "out = gaea_ext.weighted_sum(x, torch.tensor([0.25, 0.5]))\n"
        "p = torch.tensor([[0.5, 0.5]])\n"
        "gaea_ext.exp_grad_step_(p, torch.tensor([[0.0, 1.0]]), 1.0)\n"
        "print(json.dumps([gaea_ext.backend('cpu'), gaea_ext.backend('cuda'), out.tolist(), p.tolist()]))\n"
    )
    res = run_python(code, GAEA_EXT_BACKEND="reference")
    cpu, cuda, out, p = json.loads(res.stdout.strip().splitlines()[-1])
    assert cpu == "reference" and cuda == "reference"
    assert out == [1.25, 1.25, 1.25]
    e = 2.718281828459045
    assert p[0] == pytest.approx([e / (e + 1), 1 / (e + 1)], rel=1e-6)


def test_default_backend_in_fresh_process():
    res = run_python("import gaea_ext; print(gaea_ext.HAS_EXTENSION, gaea_ext.backend('cpu'))")
    has, cpu = res.stdout.split()
    assert has == str(gaea_ext.HAS_EXTENSION)
    assert cpu == ("cpu" if has == "True" else "reference")


def test_import_warning_only_without_extension():
    """One clear warning at import when the extension is missing; none when it is built."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as ws:\n"
        "    warnings.simplefilter('always')\n"
        "    import gaea_ext\n"
        "mine = [w for w in ws if 'gaea' in str(w.message).lower() or 'gaea_ext' in w.filename]\n"
        "print(gaea_ext.HAS_EXTENSION, len(mine))\n"
    )
    has, n = run_python(code).stdout.split()
    assert int(n) == (0 if has == "True" else 1)


# ---- the CUDA kernels' limits: defined in csrc/cuda_limits.h, read through the extension -------

# cuda_limits() name -> the constant of csrc/kernels/limits.cuh (csrc/cuda_limits.h's values)
LIMIT_CONSTANTS = {
    "mixed_node_terms": "kMaxMixedTerms",
    "mixed_node_xs": "kMaxMixedSources",
    "partial_channel_states": "kMaxPartialChannelStates",
    "exp_grad_segments": "kMaxExpGradSegments",
    "weighted_sum_inputs_per_launch": "kMaxInputsPerLaunch",
    "exp_grad_params_per_launch": "kMaxExpGradParamsPerLaunch",
    "dot_row_bytes": "kDotRowBytes",
}
ROUTING_LIMITS = ["mixed_node_terms", "mixed_node_xs", "partial_channel_states", "exp_grad_segments"]


@requires_kernels
def test_cuda_limits_are_the_header_constants():
    header = (ROOT / "csrc" / "kernels" / "limits.cuh").read_text()
    constants = {name: int(value) for name, value in re.findall(r"constexpr int (\w+) = (\d+);", header)}
    limits = gaea_ext.cuda_limits()
    assert set(limits) == set(LIMIT_CONSTANTS)
    for name, constant in LIMIT_CONSTANTS.items():
        assert limits[name] == constants[constant], name


@requires_kernels
@pytest.mark.parametrize("name", ROUTING_LIMITS)
def test_use_reference_above_each_cuda_limit(monkeypatch, name):
    limit = gaea_ext.cuda_limits()[name]
    assert not use_reference("cpu", **{name: limit + 1})  # the CPU kernels have no such limit
    monkeypatch.setattr(gaea_ext._backend, "CPU_SERVED_BY_CUDA_EMULATION", True)  # CPU routed as CUDA
    assert gaea_ext.backend("cpu") == "cuda"
    assert not use_reference("cpu", **{name: limit})
    assert use_reference("cpu", **{name: limit + 1})


def test_use_reference_on_the_reference_backend(monkeypatch):
    monkeypatch.setattr(gaea_ext._backend, "FORCED_REFERENCE", True)
    assert use_reference("cpu") and use_reference("cuda", mixed_node_terms=1)


def test_cuda_limits_without_the_extension_raise():
    code = (
        "import sys; sys.modules['gaea_ext._C'] = None  # the extension failed to load\n"
        "import gaea_ext\n"
        "try:\n"
        "    gaea_ext.cuda_limits()\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError', e)\n"
    )
    out = run_python(code, GAEA_EXT_BACKEND="reference").stdout.strip()
    assert out.startswith("RuntimeError gaea_ext: the compiled kernels are not available"), out
    assert out.endswith("there are no CUDA kernel limits"), out


# ---- the test suite refuses to run on the references unless asked to --------------------------


def run_pytest_without_kernels(args, **env):
    """pytest in a fresh process in which importing gaea_ext._C fails (as without a build)."""
    code = ("import sys; sys.modules['gaea_ext._C'] = None\n"
            "import pytest; sys.exit(pytest.main(sys.argv[1:]))\n")
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("GAEA_EXT_BACKEND", "GAEA_CUDA_EMULATION", "PYTEST_ADDOPTS"):
        full_env.pop(name, None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code, *args, "-p", "no:cacheprovider"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_suite_stops_at_once_without_the_kernels():
    res = run_pytest_without_kernels(["tests/test_weighted_sum.py", "-q"])
    assert res.returncode == 1, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == ("Exit: gaea_ext._C did not load (import of gaea_ext._C halted; None in sys.modules): "
                        "build the kernels with `make build`, or set GAEA_EXT_BACKEND=reference to test "
                        "the references")


def test_suite_runs_on_the_references_when_asked():
    res = run_pytest_without_kernels(
        ["tests/test_build.py::test_backend_cpu", "tests/test_weighted_sum.py::test_thread_count_does_not_change_bits",
         "-q", "-rs"], GAEA_EXT_BACKEND="reference")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 1 skipped" in res.stdout
    assert "GAEA_EXT_BACKEND=reference: the ops run on the references, this test checks the kernels" in res.stdout
