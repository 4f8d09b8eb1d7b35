#!/usr/bin/env bash
# The quantization table on SmolLM2-135M: fp32 dense; RTN, GPTQ and AWQ at w4 g128, w3 g128 and
# w8 per-channel (GPTQ also with act-order at w4/w3); SmoothQuant W8A8 (and plain W8A8); one mixed-precision point at 3.5 bits (3/4-bit layers,
# g128); plus the kernel-friendly w4 g64 rows (SmolLM2's hidden size 576 is not a multiple of
# 128: g128 leaves a last partial group of 64, see METHODS.md). Full WikiText-2 test perplexity
# at seqlen 2048 (eval=ppl: plus size and latency). Calibration on WikiText-2 validation, seed 0:
# 128 x 2048 for GPTQ / SmoothQuant / mixed precision, 128 x 512 for AWQ (its reference length).
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/quant.sh                 # the full table (hours on CPU)
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/quant.sh tracker=none    # extra Hydra overrides go to every run
#
# Small settings for a smoke test (same grid, tiny model / few windows):
#   MODEL=tiny-llama NSAMPLES=4 SEQLEN=64 AWQ_SEQLEN=64 WINDOWS=2 EVAL_SEQLEN=256 G=32 bash sweeps/quant.sh tracker=none
# Finished runs are skipped, so the script can be interrupted and re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}    # runs this checkout's code (python -m slimbench.cli)
MODEL=${MODEL:-smollm2-135m}
# shellcheck source=sweeps/out.sh
source sweeps/out.sh
NSAMPLES=${NSAMPLES:-128}             # calibration windows
SEQLEN=${SEQLEN:-2048}                # calibration window length (GPTQ, SmoothQuant, mixed precision)
AWQ_SEQLEN=${AWQ_SEQLEN:-512}         # AWQ's reference calibration length
WINDOWS=${WINDOWS:-null}              # perplexity windows (null = the whole test split)
EVAL_SEQLEN=${EVAL_SEQLEN:-2048}      # perplexity window length
G=${G:-128}                           # the table's group size
G_KERNEL=${G_KERNEL:-64}              # the comparable, kernel-friendly group size on SmolLM2

slimbench() { "$PYTHON" -m slimbench.cli "$@"; }

COMMON=(
  "model=$MODEL" eval=ppl seed=0 calib.seed=0 "calib.nsamples=$NSAMPLES"
  "eval.evaluators.perplexity.seqlen=$EVAL_SEQLEN" "eval.evaluators.perplexity.max_windows=$WINDOWS"
)

# fp32 baseline
slimbench -m "${COMMON[@]}" method=dense "$@"

# weight-only: RTN and GPTQ at w4/w3 with groups, and w8 per output channel
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=rtn,gptq method.bits=4,3 "method.group_size=$G" "$@"
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=rtn,gptq method.bits=8 method.group_size=-1 "$@"
# GPTQ with act-order (static groups keep packed groups contiguous): on SmolLM2 the reference's
# column-order default loses to RTN at w4 g128 (benchmarks/gptq_vs_rtn.py), act-order does not
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=gptq method.bits=4,3 "method.group_size=$G" method.act_order=true method.static_groups=true "$@"

# AWQ (128 x 512 calibration windows)
slimbench -m "${COMMON[@]}" "calib.seqlen=$AWQ_SEQLEN" method=awq method.bits=4,3 "method.group_size=$G" "$@"
slimbench -m "${COMMON[@]}" "calib.seqlen=$AWQ_SEQLEN" method=awq method.bits=8 method.group_size=-1 "$@"

# SmoothQuant W8A8 (int8 x int8 kernel)
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=smoothquant method.alpha=0.5 "$@"
# diagnostic: plain W8A8 (the paper's baseline, no smoothing) on the same kernel
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=smoothquant method.alpha=0.5 method.smooth=false "$@"

# mixed precision: 3/4-bit layers by Hessian-trace sensitivity, 3.5 bits on average, GPTQ
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=mixed_precision method.target_bits=3.5 "method.group_size=$G" "$@"

# the kernel-friendly w4 g64 rows (last: the table's g128 rows come first)
slimbench -m "${COMMON[@]}" "calib.seqlen=$SEQLEN" method=rtn,gptq method.bits=4 "method.group_size=$G_KERNEL" "$@"
slimbench -m "${COMMON[@]}" "calib.seqlen=$AWQ_SEQLEN" method=awq method.bits=4 "method.group_size=$G_KERNEL" "$@"

slimbench leaderboard --model "$MODEL" --suite ppl --methods dense,rtn,gptq,awq,smoothquant,mixed_precision \
  --markdown "$OUT/quant-$MODEL.md"
