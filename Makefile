# gaea-ext developer tasks. On a fresh machine `make search` and `make test` do all the set-up.
#   make search  venv + build + a ~5-minute GAEA search on NAS-Bench-201 / CIFAR-10 (CPU)
#   make test    venv + build + tests (unit, CUDA kernels under CPU emulation, benchmark smokes)
#   make bench   kernel profiler table            make perf    benchmark suites with the targets
#   make build   (re)build the kernels in place  make cmake-test   CMake build + ctest
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
MAX_JOBS ?= 2
export MAX_JOBS
BUILD_DIR ?= build/cmake
CUDA_ARCHS ?= 80;90
CMAKE_ARGS ?=
# Extra pytest options for the test and emulation runs, e.g. PYTEST_ARGS="-n 2 --dist loadfile"
# (pytest-xdist: one worker per core, each test file on one worker); CI sets that.
PYTEST_ARGS ?=

SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh csrc/kernels/*.cuh) setup.py
DEPS_STAMP := $(VENV)/.stamp-deps
# One stamp per GAEA_EXT_CUDA setting (unset, 0, 1), so changing it rebuilds.
BUILD_STAMP := build/.stamp-kernels$(if $(GAEA_EXT_CUDA),-cuda$(GAEA_EXT_CUDA))

# The default search: CIFAR-10 from the shared JPEG tarball when it is there (else the official
# download), the NB201 table from ../shared/data/nb201 when it is there. A reduced budget for
# 2 CPU cores: a narrower, shallower supernet (C=8, N=1), 10,000 training images, 5 epochs.
SHARED ?= ../shared
CIFAR10 ?= $(if $(wildcard $(SHARED)/data/cifar10/cifar10-jpeg.tar.gz),$(SHARED)/data/cifar10/cifar10-jpeg.tar.gz,cifar10)
SEARCH_OUT ?= runs/make-search-$(shell date +%Y%m%d-%H%M%S)
SEARCH_ARGS ?= --space nb201 --method gaea --objective erm --channels 8 --cells 1 --train-images 10000 \
  --epochs 5 --batch-size 64 --seed 0

.PHONY: all venv build search test test-fast test-cuda-emulation test-cuda-emulation-asan kernel-resources bench perf bench-smoke cmake-test clean

all: build

# The venv: torch (a CUDA 13 build), the build tools and the test extras; gaea_ext and
# gaea_nas installed in editable mode.
$(DEPS_STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" "setuptools>=64" wheel
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)" ninja numpy
	GAEA_EXT_SKIP_BUILD=1 $(PY) -m pip install --quiet --no-build-isolation -e ".[nas,dev,cuda]"
	touch $@

venv: $(DEPS_STAMP)

# Incremental: ninja keeps the objects under build/, so only changed sources recompile.
# The nvcc CUDA kernels compile only when a GPU is visible (or GAEA_EXT_CUDA=1, as in CI), so
# on a CPU machine a fresh `make search` compiles C++ only (docs/install.md).
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) setup.py build_ext --inplace
	mkdir -p build && touch $@

build: $(BUILD_STAMP)

search: build
	$(PY) -m gaea_nas search --dataset $(CIFAR10) $(SEARCH_ARGS) --out $(SEARCH_OUT)

# The suite stops at once, in one line, when the compiled kernels did not load (tests/conftest.py);
# GAEA_EXT_BACKEND=reference runs it on the pure-PyTorch references on purpose.
test: build
	$(PY) -m pytest tests -q -ra --durations=25 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-cuda-emulation
	$(PY) -m pytest benchmarks -q --benchmark-disable -m "not perf and not gpu and not compile" $(PYTEST_ARGS)

# The CUDA kernels compiled for the host and run on the CPU (tests/cuda_emulation/): the op
# tests' CPU cases then run the CUDA code, so it is tested on machines without a GPU (the
# supernets' tests run the same way with GAEA_CUDA_EMULATION=1 pytest tests/nas/test_*_space.py;
# left out of CI for time).
# Left out: thread-count and determinism cases (they say nothing about the emulation), compile
# cases (slow), and parametrisations that differ only above the kernels (softmax arch
# parameters, exclude_none, two of the three 10,000-step EG runs), to keep CI short.
EMULATED_TESTS := tests/test_mixed_node.py tests/test_pool_batch_norm.py tests/test_tensor_bn.py tests/test_partial_channel.py tests/test_double_backward.py \
  tests/test_weighted_sum.py tests/test_sample_weighted_sum.py tests/test_exp_grad.py tests/test_optim.py tests/test_bad_input.py
# The same kernels through the NVRTC backend's Python launchers (gaea_ext/cupy_backend.py), their
# launches run by name on the emulated kernels: a few cases per op.
NVRTC_EMULATED_TESTS := tests/test_nvrtc_backend.py tests/test_weighted_sum.py tests/test_sample_weighted_sum.py \
  tests/test_exp_grad.py tests/test_pool_batch_norm.py tests/test_partial_channel.py
NVRTC_EMULATED_CASES := launch_path or (test_weighted_sum and (matches_reference or many_inputs or only_some \
  or gradcheck_partial)) or (test_sample_weighted_sum and (matches_reference or layouts or many_inputs \
  or gradient_patterns)) or (test_exp_grad and (matches_formula or multi_steps or multi_nonfinite or segments_normalise)) \
  or (test_pool_batch_norm and (pool_stats_matches or pool_stats_layouts)) \
  or (test_partial_channel and (matches_reference or odd_shapes or layouts))
test-cuda-emulation: build
	GAEA_CUDA_EMULATION=1 $(PY) -m pytest $(EMULATED_TESTS) -q $(PYTEST_ARGS) -k "not compile and not deterministic and not threads \
	  and not (shapes_and_grads and softmax) and not exclude_none and (not stays_valid or darts)"
	GAEA_CUDA_EMULATION=1 GAEA_EXT_BACKEND=cupy $(PY) -m pytest $(NVRTC_EMULATED_TESTS) -q -k "$(NVRTC_EMULATED_CASES)"

# Every kernel compiled with NVRTC for sm_80 and sm_90, with its registers and stack (no GPU needed).
nvrtc-kernels: venv
	$(PY) -m gaea_ext.nvrtc --arch sm_80 --check
	$(PY) -m gaea_ext.nvrtc --arch sm_90 --check

# Registers, stack and shared memory of every compiled CUDA kernel (cuobjdump; no GPU needed).
kernel-resources: build
	$(PY) benchmarks/kernel_resources.py --check

# The same with the emulated kernels built with AddressSanitizer: an out-of-bounds access of
# a CUDA kernel into a tensor fails (compute-sanitizer memcheck's job on a GPU). About 3x slower.
# (Not test_optim.py nor opcheck: they import triton, whose C++ exceptions ASan cannot intercept.)
ASAN_LIB = $$(gcc -print-file-name=libasan.so)
test-cuda-emulation-asan: build
	GAEA_CUDA_EMULATION_ASAN=1 GAEA_CUDA_EMULATION=1 LD_PRELOAD=$(ASAN_LIB) \
	  ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1 \
	  $(PY) -m pytest $(filter-out tests/test_optim.py,$(filter tests/test_%,$(EMULATED_TESTS))) -q -p no:cacheprovider --capture=sys \
	  -k "not compile and not deterministic and not threads and not opcheck"

test-fast: build
	$(PY) -m pytest tests -q -x

bench: build
	$(PY) -m gaea_ext.bench

perf: build
	$(PY) -m pytest benchmarks -m perf -q

bench-smoke: build
	$(PY) -m gaea_ext.bench --quick

# The same sources as a C++ library for C++ users and IDEs, with a ctest executable.
cmake-test: $(DEPS_STAMP)
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)" \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DPython3_EXECUTABLE=$(PY) $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j $(MAX_JOBS)
	cd $(BUILD_DIR) && ctest --output-on-failure

clean:
	rm -rf build gaea_ext/_C*.so *.egg-info .pytest_cache .benchmarks .hypothesis
