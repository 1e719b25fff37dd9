"""build_info(), backend(), HAS_EXTENSION and the GAEA_EXT_BACKEND=reference override."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaea_ext

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"cuda", "cpu", "reference"}


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
    elif (gaea_ext.HAS_EXTENSION and gaea_ext.build_info()["cuda"] and torch.cuda.is_available()
          and os.environ.get("GAEA_EXT_BACKEND") != "reference"):
        pytest.fail("CUDA kernels are built and a GPU is present, but backend('cuda') is " + got)


@pytest.mark.skipif(not gaea_ext.HAS_EXTENSION, reason="needs the built extension")
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
