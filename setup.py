"""Build and install gaea-ext: the gaea_ext._C kernels, gaea_ext and gaea_nas.

Environment overrides:
  GAEA_EXT_CUDA=0|1       force the CUDA kernels off / on (default: on when torch is a CUDA
                          build and a CUDA toolkit with nvcc is found, even without a GPU)
  CUDA_HOME               the toolkit root (holding bin/nvcc and lib64/libcudart.so)
  TORCH_CUDA_ARCH_LIST    archs to compile (default "8.0;9.0+PTX" when no GPU is visible)
  MAX_JOBS                parallel compile jobs (ninja)
  GAEA_EXT_DEBUG=1        -O0 -g build
  GAEA_EXT_SKIP_BUILD=1   install the Python packages only (the Makefile then builds the
                          kernels in place with `setup.py build_ext --inplace`, incrementally)
"""
import glob
import os
import shutil
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


def want_cuda(torch_is_cuda_build, cuda_home):
    flag = os.environ.get("GAEA_EXT_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        if not torch_is_cuda_build or cuda_home is None:
            sys.exit("GAEA_EXT_CUDA=1 but torch is not a CUDA build or no CUDA toolkit (bin/nvcc, lib64/libcudart.so) was found; set CUDA_HOME")
        return True
    return torch_is_cuda_build and cuda_home is not None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def extension():
    use_cuda = want_cuda(torch.version.cuda is not None, CUDA_HOME)
    debug = os.environ.get("GAEA_EXT_DEBUG") == "1"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    defines = [f"-DGAEA_EXT_TORCH_VERSION={torch.__version__}"]
    if not use_cuda:
        print("gaea_ext: building the CPU kernels only", file=sys.stderr)
        return CppExtension(
            "gaea_ext._C", sources,
            extra_compile_args={"cxx": cxx + defines}, extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    print(f"gaea_ext: building CPU and CUDA kernels (CUDA_HOME={CUDA_HOME}, archs {arch_list})", file=sys.stderr)
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
    + find_packages(where="python", include=["gaea_nas", "gaea_nas.*"]),
    package_dir={"gaea_ext": "gaea_ext", "gaea_nas": "python/gaea_nas"},
    ext_modules=[] if os.environ.get("GAEA_EXT_SKIP_BUILD") == "1" else [extension()],
    cmdclass={"build_ext": BuildExtension},
    # The ops need only torch and numpy; the NAS layer's data, progress and plots need the extra.
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "nas": ["pillow", "tqdm", "matplotlib", "torchvision", "tensorboard"],
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "pytest-xdist"],
    },
    entry_points={"console_scripts": ["gaea = gaea_nas.cli:main"]},
    zip_safe=False,
)
