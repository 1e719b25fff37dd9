#!/usr/bin/env bash
# The paper protocol on one GPU, sized to a 10-minute run:
# GAEA ERM on NAS-Bench-201 / CIFAR-10, C=16, N=5, batch 64, 25 epochs.
#
#     # data/ holds cifar10-jpeg.tar.gz and nb201_accuracies.csv.gz (or set GPU_SEARCH_DATA)
#     OUT=/some/dir bash benchmarks/gpu_search.sh
#
# Writes $OUT/search.log, $OUT/result.json, $OUT/metrics.jsonl and $OUT/summary.log (build,
# wall time, cell, NB201 accuracies). GPU_SEARCH_ARGS adds or overrides search options
# (e.g. "--amp bf16 --channels-last", or "--epochs 2" for a dry run); GPU_SEARCH_SKIP_BUILD=1
# reuses gaea_ext/_C*.so already in the tree; GPU_SEARCH_TIMEOUT_S caps the search (default 500).
set -u
export OUT=${OUT:-$PWD/gpu_search_out}
PY=${PYTHON:-python}
DATA=${GPU_SEARCH_DATA:-data}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export GAEA_NB201_TABLE=${GAEA_NB201_TABLE:-$DATA/nb201_accuracies.csv.gz}
export GAEA_DATA_CACHE=${GAEA_DATA_CACHE:-$OUT/.cache}

{
    echo "gpu_search: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} | tee "$OUT/summary.log"

t0=$SECONDS
if [[ ${GPU_SEARCH_SKIP_BUILD:-0} == 1 ]] && ls gaea_ext/_C*.so >/dev/null 2>&1; then
    echo "build: reusing $(ls gaea_ext/_C*.so)" | tee -a "$OUT/summary.log"
else
    GAEA_EXT_CUDA=${GAEA_EXT_CUDA:-1} "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
    echo "build: rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.log"
fi

t1=$SECONDS
# shellcheck disable=SC2086  # GPU_SEARCH_ARGS is a list of options
timeout -k 10 "${GPU_SEARCH_TIMEOUT_S:-500}" "$PY" -m gaea_nas search --space nb201 --method gaea \
    --objective erm --dataset "$DATA/cifar10-jpeg.tar.gz" --channels 16 --cells 5 --batch-size 64 --epochs 25 \
    --seed 0 --device ${GPU_SEARCH_DEVICE:-cuda} --no-progress --out "$OUT/run" ${GPU_SEARCH_ARGS:-} \
    >"$OUT/search.log" 2>&1
rc=$?
echo "search: rc=$rc in $((SECONDS - t1)) s (wall time includes the one-off JPEG decode)" | tee -a "$OUT/summary.log"
cp "$OUT/run/result.json" "$OUT/run/metrics.jsonl" "$OUT/" 2>/dev/null
tail -n 4 "$OUT/search.log" | tee -a "$OUT/summary.log"
rm -rf "$OUT/run" "$OUT/.cache"   # checkpoints and the decode cache do not come back
exit $rc
