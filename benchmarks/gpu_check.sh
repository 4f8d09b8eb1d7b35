#!/usr/bin/env bash
# The GPU check of issue 20: one run on a CUDA machine answers every GPU question, in under
# 8 minutes on an H100/H200 (each part has a time limit; the limits add up to 475 s).
#
#   bash benchmarks/gpu_check.sh             # writes results/benchmarks/gpu/{kernels,decode,methods,compress}.{md,json},
#                                            # pytest_gpu.log, summary.md (commit them)
#   bash benchmarks/gpu_check.sh --dry-run   # no GPU needed: every Python part on CPU with tiny shapes
#                                            # (checks that the script runs; numbers meaningless), to $OUT_DRY
#
# Parts (benchmarks/gpu_check.py): the kernel table (correctness + µs of every kernel side by side
# with cuBLAS bf16, and the issue's targets), decode tokens/s of a Llama-2-7B-shaped model int4 vs
# bf16, every registered method with device=cuda on tiny models (float32 and bfloat16, the sparse-MoE
# tiny-moe, the diffusion-capable methods on tiny-dit, every pipeline preset, save + reload, float16,
# then the zero-shot and FID evaluators where data is there; cases run most important first until the
# part's budget), Wanda/SparseGPT/GPTQ/AWQ compression time and GPU memory on a SmolLM2-shaped model
# at 128 x 2048 calibration, and `pytest -m gpu`.
# Environment: PY (default .venv/bin/python, a CUDA build of torch), OUT (default results/benchmarks/gpu),
# SLIMBENCH_DATA_DIR (the shared datasets: the evaluator rows of the methods part; without it they say n/a).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DRY=""
OUT=${OUT:-results/benchmarks/gpu}
if [ "${1:-}" = "--dry-run" ]; then
  DRY="--dry-run"
  OUT=${OUT_DRY:-${TMPDIR:-/tmp}/slimbench-gpu-check-dry}
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch (set PY to the project's Python, e.g. PY=.venv/bin/python)"
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1)): nothing to measure."
  echo "gpu_check: on a machine with an NVIDIA GPU and a CUDA build of torch run: bash benchmarks/gpu_check.sh"
  if [ -z "$DRY" ]; then
    echo "gpu_check: (bash benchmarks/gpu_check.sh --dry-run checks the script's Python parts on CPU)"
    exit 0
  fi
  echo "gpu_check: dry run on CPU, tiny shapes, output in $OUT"
fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
{
  echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC') ${DRY:+(dry run on CPU)}"
  echo
  echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)'); $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  echo
  echo "| part | exit code | seconds | log |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "gpu_check: $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "| $name | $rc$([ $rc -eq 124 ] && echo ' (time limit)') | $((SECONDS - start)) | $name.log |" >> "$SUMMARY"
  tail -3 "$OUT/$name.log"
}

export PYTHONPATH=.
part kernels 110 "$PY" benchmarks/gpu_check.py kernels $DRY --out "$OUT"
part decode 70 "$PY" benchmarks/gpu_check.py decode $DRY --out "$OUT"
part methods 130 "$PY" benchmarks/gpu_check.py methods $DRY --budget-s 110 --out "$OUT"  # no new case after 110 s
part compress 110 "$PY" benchmarks/gpu_check.py compress $DRY --out "$OUT"
if [ -z "$DRY" ]; then
  part pytest_gpu 55 "$PY" -m pytest -q -m gpu -p no:cacheprovider
fi
echo >> "$SUMMARY"
for f in kernels decode methods compress; do
  [ -f "$OUT/$f.md" ] && { echo "see $f.md"; } >> "$SUMMARY"
done
echo "gpu_check: done in ${SECONDS}s; summary in $SUMMARY"
cat "$SUMMARY"
