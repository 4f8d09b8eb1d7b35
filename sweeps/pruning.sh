#!/usr/bin/env bash
# The pruning table on SmolLM2-135M: dense; magnitude, Wanda and SparseGPT at 50% unstructured
# and 2:4 (masked-dense: no speedup expected); full WikiText-2 test perplexity at seqlen 2048
# (eval=ppl: plus size and latency); calibration 128 x 2048 WikiText-2 validation, seed 0.
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/pruning.sh                 # the full table (hours on CPU)
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/pruning.sh tracker=none    # extra Hydra overrides go to every run
#
# Small settings for a smoke test (same grid, tiny model / few windows):
#   MODEL=tiny-llama NSAMPLES=4 SEQLEN=64 WINDOWS=2 EVAL_SEQLEN=256 bash sweeps/pruning.sh tracker=none
# Finished runs are skipped, so the script can be interrupted and re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=sweeps/pruning-settings.sh
source sweeps/pruning-settings.sh

# dense baseline
slimbench -m "${COMMON[@]}" method=dense "$@"

# unstructured / N:M: each method at 50% unstructured and 2:4 (6 runs)
slimbench -m "${COMMON[@]}" method=magnitude,wanda,sparsegpt method.sparsity=0.5 method.pattern=unstructured,2:4 "$@"

# --- structured rows: Numerical Pruning and FLAP at 20% / 30% -------------------------------
# The same settings (MODEL, NSAMPLES, ...) and overrides go to sweeps/pruning-structured.sh,
# so the leaderboard below shows all rows of the issue's table in one protocol group.
bash sweeps/pruning-structured.sh "$@"
# ---------------------------------------------------------------------------------------------

slimbench leaderboard --model "$MODEL" --suite ppl --methods dense,magnitude,wanda,sparsegpt,numerical_pruning,flap \
  --markdown "$OUT/pruning-$MODEL.md"
