"""The distributions: `pip wheel .` builds a wheel that installs into a fresh venv and works
there, outside the source tree (the compiled CPU kernels, the backend choice, the `gaea`
entry point, the CUDA device headers as gaea_ext.kernels); the sdist carries every kernel
source and header, whichever of them a build compiles.

Kept fast for CI: the wheel is built without build isolation in the checkout, so ninja
reuses the objects of the in-place build (`make build`, the same flags from the same
environment) and only links; the fresh venv gets torch and the other dependencies from this
environment through a .pth line instead of installing them again."""
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import gaea_ext

ROOT = Path(__file__).resolve().parents[1]

# Settings of the test run that must not reach the wheel's build or its smoke test.
TEST_ONLY_ENV = ("GAEA_EXT_SKIP_BUILD", "GAEA_EXT_BACKEND", "GAEA_CUDA_EMULATION", "PYTHONPATH", "PYTHONHOME")

SMOKE = """
import importlib.metadata, json, torch, gaea_ext
x = [torch.ones(3), 2 * torch.ones(3)]
w = torch.tensor([0.25, 0.5])
print(json.dumps({
    "gaea_ext": gaea_ext.__file__, "C": gaea_ext._backend._C.__file__,
    "has_extension": gaea_ext.HAS_EXTENSION, "cpu": gaea_ext.backend("cpu"),
    "weighted_sum": gaea_ext.weighted_sum(x, w).tolist(),
    "kernel": torch.ops.gaea_ext.weighted_sum(x, w).tolist(),
    "requires": importlib.metadata.requires("gaea-ext"),
}))
"""


def clean_env():
    env = dict(os.environ)
    for name in TEST_ONLY_ENV:
        env.pop(name, None)
    return env


def run(args, cwd, timeout=600):
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", out, ROOT], cwd=ROOT)
    wheels = list(out.glob("gaea_ext-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh venv with the wheel installed; this environment's site-packages (torch, numpy, ...)
    follow its own on sys.path. The .pth files in there are not processed, so an editable
    install of gaea_ext there stays out."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root)
    python = root / "bin" / "python"
    paths = json.loads(run([python, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"],
                           cwd=root).stdout)
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(paths["purelib"], "outer_environment.pth").write_text("".join(p + "\n" for p in outer))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=root)
    return root


def test_wheel_holds_the_packages_the_extension_and_the_device_headers(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("gaea_ext/_C.") and n.endswith(".so") for n in names), names
    for module in ("gaea_ext/__init__.py", "gaea_ext/nn/__init__.py", "gaea_nas/cli.py"):
        assert module in names, module
    headers = sorted(p.name for p in (ROOT / "csrc" / "kernels").glob("*.cuh"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("gaea_ext/kernels/")) == headers
    assert not [n for n in names if n.startswith(("tests/", "csrc/", "benchmarks/"))]


def test_wheel_works_in_a_fresh_venv_outside_the_checkout(venv):
    res = run([venv / "bin" / "python", "-c", SMOKE], cwd=venv)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["gaea_ext"].startswith(str(venv)), got["gaea_ext"]
    assert got["C"].startswith(str(venv)), got["C"]
    assert got["has_extension"] is True and got["cpu"] == "cpu"
    assert got["weighted_sum"] == got["kernel"] == [1.25, 1.25, 1.25]
    extras = " ".join(got["requires"])
    assert 'cupy-cuda13x>=13; extra == "cuda"' in extras and 'cupy-cuda12x>=13; extra == "cuda12"' in extras


def test_gaea_entry_point_reports_the_wheels_build(venv):
    res = run([venv / "bin" / "gaea", "info", "--json"], cwd=venv)
    info = json.loads(res.stdout)
    assert info["extension_built"] is True
    assert info["gaea_ext_backend"]["cpu"] == "cpu"
    # Built from the same sources with the same settings as the in-place build.
    assert info["build"]["cuda"] == gaea_ext.build_info()["cuda"]


def test_sdist_carries_every_kernel_source_and_header(tmp_path):
    # GAEA_EXT_SKIP_BUILD=1: the sdist must not depend on which sources this build compiles.
    env = dict(clean_env(), GAEA_EXT_SKIP_BUILD="1")
    # The egg-info in tmp_path: a SOURCES.txt left in the checkout would add its files to the sdist.
    res = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                          "sdist", "-d", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (sdist,) = tmp_path.glob("gaea_ext-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {"/".join(n.split("/")[1:]) for n in tar.getnames()}
    wanted = [p for p in (ROOT / "csrc").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    wanted = {str(p.relative_to(ROOT)) for p in wanted} | {"setup.py", "pyproject.toml", "README.md",
                                                          "gaea_ext/__init__.py", "python/gaea_nas/cli.py"}
    assert not wanted - names, sorted(wanted - names)


# ---- which kernels setup.py compiles: run it (`setup.py --version` decides, builds nothing) with
# a stand-in toolkit whose nvcc reports a chosen CUDA version -----------------------------------

def fake_toolkit(root, version):
    (root / "bin").mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_bytes(b"")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.1'\n")
    nvcc.chmod(0o755)
    return root


def setup_decision(cuda_home, gaea_ext_cuda):
    env = dict(clean_env(), CUDA_HOME=str(cuda_home), CUDA_VISIBLE_DEVICES="")  # no GPU visible
    env.pop("GAEA_EXT_CUDA", None)
    if gaea_ext_cuda is not None:
        env["GAEA_EXT_CUDA"] = gaea_ext_cuda
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


TORCH_MAJOR = torch.version.cuda.split(".")[0] if torch.version.cuda else None
needs_cuda_torch = pytest.mark.skipif(TORCH_MAJOR is None, reason="torch is not a CUDA build")


@needs_cuda_torch
@pytest.mark.parametrize("gaea_ext_cuda,toolkit_major,says", [
    ("1", "other", "GAEA_EXT_CUDA=1, but the CUDA kernels cannot be built: the CUDA toolkit at {home} is CUDA "
                   "{other}.2 and torch is built for CUDA "),
    (None, "other", "building the CPU kernels only, no nvcc CUDA kernels (the CUDA toolkit at {home} is CUDA "
                    "{other}.2"),
    (None, "torch", "building the CPU kernels only, no nvcc CUDA kernels (no GPU is visible at build time"),
])
def test_setup_compiles_nvcc_kernels_only_for_a_matching_toolkit(tmp_path, gaea_ext_cuda, toolkit_major, says):
    other = str(int(TORCH_MAJOR) - 1)
    home = fake_toolkit(tmp_path / "cuda", f"{TORCH_MAJOR if toolkit_major == 'torch' else other}.2")
    res = setup_decision(home, gaea_ext_cuda)
    assert says.format(home=home.resolve(), other=other, torch=TORCH_MAJOR) in res.stderr, res.stderr[-2000:]
    assert res.returncode == (1 if "cannot be built" in says else 0), res.stderr[-2000:]
    assert res.stdout.strip().endswith("0.1.0") or res.returncode == 1


def test_the_build_follows_gaea_ext_cuda():
    """Under `make` (and CI, which sets GAEA_EXT_CUDA=1) the in-place build and the tests see the
    same GAEA_EXT_CUDA: 1 means the nvcc kernels are compiled in, 0 that they are not."""
    flag = os.environ.get("GAEA_EXT_CUDA", "").strip()
    if flag not in ("0", "1") or not gaea_ext.HAS_EXTENSION:
        pytest.skip("GAEA_EXT_CUDA is unset (the build depended on the machine) or the kernels are not loaded")
    assert gaea_ext.build_info()["cuda"] is (flag == "1"), "rebuild the kernels with this GAEA_EXT_CUDA (make build)"
