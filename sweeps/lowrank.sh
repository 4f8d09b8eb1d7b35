#!/usr/bin/env bash
# Low-rank decomposition table: dense; SVD, FWSVD, ASVD, SVD-LLM removing 10/20/40% of the
# decoder-linear parameters; SmolLM2-135M; full WikiText-2 test perplexity (eval=ppl) plus size
# and latency; calibration windows from WikiText-2 validation.
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/lowrank.sh
#
# Calibration per method (the references' protocols, drawn from WikiText-2 validation here):
#   svd_llm: 256 x 2048 (SVD-LLM); fwsvd: the same 256 x 2048 set (as SVD-LLM compares it);
#   asvd: 32 x 2048 (ASVD4LLM's n_calib_samples), with the per-layer perplexity sensitivity pass
#   limited to ASVD_SENS (default: 4 windows x 512 tokens; the reference scores all 32 windows
#   at 2048 tokens, i.e. 210 linears x 6 candidates x 32 = 40k forwards of 2048 tokens on SmolLM2:
#   ~3.3 s each on this 2-core CPU, ~37 h; the default here is 5k forwards of 512 tokens, ~1.5 h,
#   once; set ASVD_SENS="method.sensitivity_samples=null method.sensitivity_seqlen=null" for it).
# The Gram matrices, Fisher rows, activation scales and the ASVD sensitivity table depend only
# on the dense model and the calibration set: they are computed once and shared by the ratios.
# Finished runs are skipped on re-runs. Knobs (environment):
#   SLIMBENCH  command (default: .venv/bin/python -m slimbench.cli), MODEL (smollm2-135m), EVAL (ppl), RATIOS (0.1,0.2,0.4)
#   SVDLLM_CALIB / FWSVD_CALIB / ASVD_CALIB  calibration overrides, EXTRA  overrides for every run
set -euo pipefail
cd "$(dirname "$0")/.."
SLIMBENCH=${SLIMBENCH:-.venv/bin/python -m slimbench.cli}
MODEL=${MODEL:-smollm2-135m}
# shellcheck source=sweeps/out.sh
source sweeps/out.sh
EVAL=${EVAL:-ppl}
RATIOS=${RATIOS:-0.1,0.2,0.4}
SVDLLM_CALIB=${SVDLLM_CALIB:-calib.nsamples=256 calib.seqlen=2048}
FWSVD_CALIB=${FWSVD_CALIB:-calib.nsamples=256 calib.seqlen=2048}
ASVD_CALIB=${ASVD_CALIB:-calib.nsamples=32 calib.seqlen=2048}
ASVD_SENS=${ASVD_SENS:-method.sensitivity_samples=4 method.sensitivity_seqlen=512}
EXTRA=${EXTRA:-}

run() { $SLIMBENCH -m model="$MODEL" eval="$EVAL" "$@" $EXTRA; }

run method=dense
run method=svd method.ratio="$RATIOS"
run method=svd_llm method.ratio="$RATIOS" $SVDLLM_CALIB
run method=fwsvd method.ratio="$RATIOS" $FWSVD_CALIB
run method=asvd method.ratio="$RATIOS" $ASVD_CALIB $ASVD_SENS

$SLIMBENCH leaderboard --model "$MODEL" --suite "$EVAL" --methods dense,svd,fwsvd,asvd,svd_llm \
  --markdown "$OUT/lowrank-$MODEL.md"
