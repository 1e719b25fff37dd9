"""Build and install gaea-ext: the gaea_ext._C kernels, gaea_ext and gaea_nas.

The CPU kernels are always compiled. The nvcc-compiled CUDA kernels are compiled when
  * GAEA_EXT_CUDA=1: torch must be a CUDA build and a CUDA toolkit (nvcc) of the same CUDA
    major version as torch's must be found, else the build stops with an error saying which;
  * GAEA_EXT_CUDA unset: a GPU is visible at build time, torch is a CUDA build and a toolkit
    of torch's CUDA major version is found; otherwise the build skips them and prints one
    line saying why.
Without them (GAEA_EXT_CUDA=0, or skipped) the GPU kernels come from the cupy/NVRTC backend
at run time: `pip install .[cuda]` (torch built for CUDA 13) or `.[cuda12]` (CUDA 12) adds
cupy and NVRTC. The torch-free device code it compiles, csrc/kernels/*.cuh, ships in the
package as gaea_ext.kernels. See docs/install.md.

Environment overrides:
  GAEA_EXT_CUDA=0|1       force the nvcc CUDA kernels off / on (default: see above)
  CUDA_HOME               the toolkit root (holding bin/nvcc and lib64/libcudart.so)
  TORCH_CUDA_ARCH_LIST    archs to compile (default "8.0;9.0+PTX" when no GPU is visible)
  MAX_JOBS                parallel compile jobs (ninja)
  GAEA_EXT_DEBUG=1        -O0 -g build
  GAEA_EXT_SKIP_BUILD=1   install the Python packages only (the Makefile then builds the
                          kernels in place with `setup.py build_ext --inplace`, incrementally)
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _is_toolkit_root(path):
    if not path:
        return False
    has_nvcc = os.path.isfile(os.path.join(path, "bin", "nvcc"))
    has_cudart = any(glob.glob(os.path.join(path, lib, "libcudart.so*")) for lib in ("lib64", "lib"))
    return has_nvcc and has_cudart


def find_cuda_home():
    """Return the CUDA toolkit root or None.

    torch guesses the root from the nvcc on PATH; here that nvcc is a wrapper script in
    /usr/local/bin, so the guess misses lib64/libcudart.so. Look for a real root instead.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if _is_toolkit_root(path):
            return os.path.realpath(path)
    return None


def toolkit_cuda_version(cuda_home):
    """The "major.minor" CUDA version of the toolkit's nvcc, or None when nvcc does not run."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def want_cuda(torch_cuda, cuda_home, toolkit_cuda, gpu_visible):
    """Whether to compile the nvcc CUDA kernels, and why (a phrase for the build log).

    torch_cuda: torch.version.cuda ("13.0", None for a CPU torch); cuda_home: the toolkit root
    or None; toolkit_cuda: its nvcc's version ("13.0", None when unknown); gpu_visible: a GPU
    is visible at build time. GAEA_EXT_CUDA=1 exits with an error when the kernels cannot be
    built; unset, the build skips them instead.
    """
    flag = os.environ.get("GAEA_EXT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"GAEA_EXT_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "GAEA_EXT_CUDA=0"
    problem = None
    if torch_cuda is None:
        problem = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        problem = ("no CUDA toolkit (bin/nvcc and lib64/libcudart.so under CUDA_HOME, /usr/local/cuda "
                   "or beside nvcc) was found")
    elif toolkit_cuda is None:
        problem = f"{cuda_home}/bin/nvcc --version does not say its CUDA version"
    elif toolkit_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        problem = (f"the CUDA toolkit at {cuda_home} is CUDA {toolkit_cuda} and torch is built for CUDA "
                   f"{torch_cuda}: the major versions must match (set CUDA_HOME to a CUDA "
                   f"{torch_cuda.split('.')[0]}.x toolkit)")
    if flag == "1":
        if problem:
            sys.exit(f"gaea_ext: GAEA_EXT_CUDA=1, but the CUDA kernels cannot be built: {problem}")
        return True, "GAEA_EXT_CUDA=1"
    if problem is None and not gpu_visible:
        problem = "no GPU is visible at build time (GAEA_EXT_CUDA=1 compiles them anyway)"
    if problem:
        return False, problem
    return True, f"a GPU is visible and the toolkit matches torch's CUDA {torch_cuda}"


# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def extension():
    toolkit_cuda = toolkit_cuda_version(CUDA_HOME) if CUDA_HOME else None
    # With GAEA_EXT_CUDA=0 or 1 the GPU does not matter: do not initialise CUDA to look for one.
    forced = os.environ.get("GAEA_EXT_CUDA", "").strip() in ("0", "1")
    gpu_visible = not forced and torch.version.cuda is not None and torch.cuda.is_available()
    use_cuda, why = want_cuda(torch.version.cuda, CUDA_HOME, toolkit_cuda, gpu_visible)
    debug = os.environ.get("GAEA_EXT_DEBUG") == "1"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    defines = [f"-DGAEA_EXT_TORCH_VERSION={torch.__version__}"]
    if not use_cuda:
        print(f"gaea_ext: building the CPU kernels only, no nvcc CUDA kernels ({why}); on a GPU the "
              "cupy backend compiles them at run time: pip install .[cuda] (.[cuda12] for CUDA 12)",
              file=sys.stderr)
        return CppExtension(
            "gaea_ext._C", sources,
            extra_compile_args={"cxx": cxx + defines}, extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    print(f"gaea_ext: building CPU and CUDA kernels ({why}; CUDA_HOME={CUDA_HOME}, CUDA {toolkit_cuda}, "
          f"archs {arch_list})", file=sys.stderr)
    defines += [
        "-DGAEA_EXT_WITH_CUDA",
        f"-DGAEA_EXT_CUDA_VERSION={torch.version.cuda}",
        # ';' would end the shell command that ninja runs; python_module.cpp turns '_' back.
        "-DGAEA_EXT_CUDA_ARCH_LIST=" + arch_list.replace(";", "_").replace(" ", "_"),
    ]
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    nvcc += [
        "--expt-relaxed-constexpr",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
    ]
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    return CUDAExtension(
        "gaea_ext._C", sources,
        extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc + defines},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="gaea-ext",
    version="0.1.0",
    description="Fused kernels and search loops for geometry-aware differentiable NAS (GAEA)",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["gaea_ext", "gaea_ext.*"])
    + find_packages(where="python", include=["gaea_nas", "gaea_nas.*"])
    + ["gaea_ext.kernels"],
    # gaea_ext.kernels: the torch-free CUDA device code that the cupy backend compiles with NVRTC.
    package_dir={"gaea_ext": "gaea_ext", "gaea_nas": "python/gaea_nas", "gaea_ext.kernels": "csrc/kernels"},
    package_data={"gaea_ext.kernels": ["*.cuh"]},
    ext_modules=[] if os.environ.get("GAEA_EXT_SKIP_BUILD") == "1" else [extension()],
    cmdclass={"build_ext": BuildExtension},
    # The ops need only torch and numpy; the NAS layer's data, progress and plots need the extra.
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "nas": ["pillow", "tqdm", "matplotlib", "torchvision", "tensorboard"],
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "pytest-xdist"],
        # The GPU kernels without nvcc: cupy compiles gaea_ext.kernels with NVRTC at run time.
        # Pick the one matching torch's CUDA major (torch.version.cuda): `cuda` for CUDA 13,
        # `cuda12` for CUDA 12 (extras cannot depend on the installed torch).
        "cuda": ["cupy-cuda13x>=13", "nvidia-cuda-nvrtc>=13,<14"],
        "cuda12": ["cupy-cuda12x>=13", "nvidia-cuda-nvrtc-cu12>=12,<13"],
    },
    entry_points={"console_scripts": ["gaea = gaea_nas.cli:main"]},
    zip_safe=False,
)
