#!/usr/bin/env bash
# The GPU checks of gaea-ext in one run, from the repository root:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Steps (each under `timeout`, logged to $OUT/<step>.log; a failing step does not stop the
# next one, the exit code is the number of failed or skipped steps):
#   nvidia-smi        device, driver, clocks
#   build             setup.py build_ext --inplace with this machine's torch (no downloads)
#   build_info        gaea_ext.build_info(); fails unless the CUDA kernels serve cuda
#   kernel_resources  registers / stack of every kernel as built here (cuobjdump)
#   tests_cuda        pytest tests -m cuda                      (junit xml)
#   tests_cupy        the same through the NVRTC kernels (GAEA_EXT_BACKEND=cupy)
#   nvrtc_times       NVRTC: first-use compile of every kernel for this GPU, then the cached load
#   memcheck          compute-sanitizer memcheck  on benchmarks/cuda_kernels_once.py
#   racecheck         compute-sanitizer racecheck on the same script
#   bench_cuda        python -m gaea_ext.bench --device cuda    (table + bench_cuda.json)
#   bench_cupy        the same table on the NVRTC kernels       (bench_cupy.json; same source as bench_cuda)
#   bench_gpu         pytest benchmarks -m gpu: GPU targets and per-variant benchmarks
#   search_e2e        benchmarks/search_step.py --device cuda: NB201 search iteration vs the baseline
#                     (images/s, memory, kernel launches per iteration, largest batch)
#   train_step        benchmarks/train_step.py --device cuda: NetworkCIFAR(36, 20, aux) training step per
#                     switch, the largest batch, the projected 600-epoch CIFAR-10 time
#   tests_full        pytest tests (the whole suite, CUDA cases included)
#   bench_cpu_quick   python -m gaea_ext.bench --device cpu --quick
# The whole run stays inside GPU_CHECK_BUDGET_S (default 540 s): a step gets at most the time
# left, and steps are skipped once it is spent. To keep $OUT to a few files (at most 8), by
# default (GPU_CHECK_PACK=1) every log is packed into gpu_check_logs.tar.gz and only the summary
# and the JSON results stay beside it.
# GPU_CHECK_SKIP_BUILD=1 reuses gaea_ext/_C*.so already in the tree (a rerun on a warm machine).
set -u

export OUT=${OUT:-$PWD/gpu_check_out}
export PY=${PYTHON:-python}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
mkdir -p "$OUT"
: >"$OUT/summary.log"

export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export GAEA_EXT_CUDA=1
export PATH="$CUDA_HOME/bin:$PATH"

START=$SECONDS
FAILED=()

# step NAME CAP_SECONDS CMD...: run CMD (a command or one of the exported functions below)
# under timeout (CAP or the time left), logging to $OUT/NAME.log
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    ((left < cap)) && cap=$left
    if ((cap < 10)); then
        printf '%-4s %-16s (time budget spent)\n' SKIP "$name" | tee -a "$OUT/summary.log"
        FAILED+=("$name")
        return
    fi
    local t0=$SECONDS rc
    timeout -k 10 "$cap" bash -c '"$@"' "$name" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local verdict=ok
    ((rc == 0)) || { verdict=FAIL; FAILED+=("$name"); }
    ((rc == 124 || rc == 137)) && verdict=TIME
    printf '%-4s %-16s rc=%-3s %4ss (cap %ss)\n' "$verdict" "$name" "$rc" "$((SECONDS - t0))" "$cap" |
        tee -a "$OUT/summary.log"
}

build() {
    if [[ ${GPU_CHECK_SKIP_BUILD:-0} == 1 ]] && ls gaea_ext/_C*.so >/dev/null 2>&1; then
        echo "GPU_CHECK_SKIP_BUILD=1: using $(ls gaea_ext/_C*.so)"
        return 0
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$PY" setup.py build_ext --inplace && return 0
    echo "build_ext --inplace failed; trying pip install -e (no network, no deps)"
    "$PY" -m pip install --no-build-isolation --no-deps -e .
}

build_info() {
    "$PY" - <<'EOF'
import json, torch, gaea_ext
print(json.dumps(gaea_ext.build_info(), indent=1))
print("device:", torch.cuda.get_device_name(), "| backend(cuda):", gaea_ext.backend("cuda"))
assert gaea_ext.backend("cuda") == "cuda", "the CUDA kernels do not serve cuda"
EOF
}

sanitize() {  # sanitize TOOL: compute-sanitizer TOOL on one run of every CUDA kernel
    local bin
    bin=$(command -v compute-sanitizer ||
        ls "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer" 2>/dev/null | head -1)
    [[ -n $bin ]] || { echo "compute-sanitizer not found under PATH or $CUDA_HOME"; return 1; }
    # without the caching allocator every tensor is its own allocation, so overruns are seen
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$bin" --tool "$1" --error-exitcode 9 --print-limit 50 \
        "$PY" benchmarks/cuda_kernels_once.py
}

nvrtc_times() {  # first-use NVRTC compile of every kernel for this GPU (empty cache), then the cached load
    GAEA_EXT_CACHE_DIR=$(mktemp -d) "$PY" - <<'EOF'
import time, torch
from gaea_ext import nvrtc
major, minor = torch.cuda.get_device_capability()
arch = f"sm_{major}{minor}"
for label in ("first use (compile)", "cached load"):
    t = time.perf_counter()
    compiled = nvrtc.compile_all(arch)
    print(f"{label}: {len(compiled)} headers for {arch} in {time.perf_counter() - t:.2f} s")
EOF
}

export -f build build_info sanitize nvrtc_times

pack_logs() {  # keep at most 8 files in $OUT
    [[ ${GPU_CHECK_PACK:-1} == 1 ]] || return 0
    local keep=(summary.log bench_cuda.json bench_cupy.json e2e_cuda.json search_e2e.log gpu_check_logs.tar.gz)
    (cd "$OUT" && tar czf gpu_check_logs.tar.gz --exclude gpu_check_logs.tar.gz -- * &&
        for f in *; do [[ " ${keep[*]} " == *" $f "* || $f == train-step-*.json ]] || rm -rf -- "$f"; done)
}

echo "gpu_check: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') budget ${BUDGET_S}s" |
    tee -a "$OUT/summary.log"
step nvidia-smi 20 bash -c 'nvidia-smi && nvidia-smi -q -d CLOCK'
step build 200 build
step build_info 60 build_info
step kernel_resources 20 "$PY" benchmarks/kernel_resources.py --check
step tests_cuda 90 "$PY" -m pytest tests -m cuda -q -p no:cacheprovider --junitxml="$OUT/junit_tests_cuda.xml"
step tests_cupy 90 env GAEA_EXT_BACKEND=cupy "$PY" -m pytest tests -m cuda -q -p no:cacheprovider \
    --junitxml="$OUT/junit_tests_cupy.xml"
step nvrtc_times 60 nvrtc_times
step memcheck 90 sanitize memcheck
step racecheck 90 sanitize racecheck
step bench_cuda 150 "$PY" -m gaea_ext.bench --device cuda --json "$OUT/bench_cuda.json"
step bench_cupy 120 env GAEA_EXT_BACKEND=cupy "$PY" -m gaea_ext.bench --device cuda --json "$OUT/bench_cupy.json"
step bench_gpu 90 env GAEA_BENCH_NO_COMPILE=1 "$PY" -m pytest benchmarks -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/junit_bench_gpu.xml"
step search_e2e 120 "$PY" benchmarks/search_step.py --device cuda --iters 10 --warmup 3 --largest-batch --json "$OUT/e2e_cuda.json"
step train_step 90 "$PY" benchmarks/train_step.py --device cuda --batch 96 --switches channels_last bf16 compile \
    --out-dir "$OUT"
step tests_full 120 "$PY" -m pytest tests -q -p no:cacheprovider --junitxml="$OUT/junit_tests_full.xml"
step bench_cpu_quick 60 "$PY" -m gaea_ext.bench --device cpu --quick

echo "total $((SECONDS - START))s; failed or skipped: ${FAILED[*]:-none}" | tee -a "$OUT/summary.log"
[[ -f $OUT/bench_cuda.log ]] && tail -n 40 "$OUT/bench_cuda.log"
pack_logs
exit "${#FAILED[@]}"
