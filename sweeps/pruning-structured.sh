#!/usr/bin/env bash
# The structured-pruning table on SmolLM2-135M: dense; Numerical Pruning and FLAP removing 20% and
# 30% of the decoder's attention+MLP parameters (method.ratio_of=params; KV groups and MLP
# channels physically removed: sliced-dense), plus (NP_UNITS=1) Numerical Pruning at the paper's
# own unit ratio (20% / 30% of KV groups + channels). Full WikiText-2 test perplexity at seqlen 2048
# (eval=ppl: plus size and latency); calibration 128 x 2048 WikiText-2 validation, seed 0.
# Both methods read the same cached dense statistics (one calibration pass for all 6 runs).
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/pruning-structured.sh                 # the full table (hours on CPU)
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/pruning-structured.sh tracker=none    # extra Hydra overrides go to every run
#
# Small settings for a smoke test (same grid, tiny model / few windows):
#   MODEL=tiny-llama NSAMPLES=4 SEQLEN=64 WINDOWS=2 EVAL_SEQLEN=256 bash sweeps/pruning-structured.sh tracker=none
# Finished runs are skipped, so the script can be interrupted and re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=sweeps/pruning-settings.sh
source sweeps/pruning-settings.sh

# dense baseline (the same run_id as in sweeps/pruning.sh: skipped if already there)
slimbench -m "${COMMON[@]}" method=dense "$@"

# 20% / 30% of attention+MLP parameters removed (4 runs)
slimbench -m "${COMMON[@]}" method=numerical_pruning,flap method.ratio=0.2,0.3 method.ratio_of=params "$@"

# Numerical Pruning at the paper's unit ratio (20% / 30% of KV groups + MLP channels; 2 runs;
# not in the acceptance table, so opt-in: NP_UNITS=1)
if [ "${NP_UNITS:-0}" = 1 ]; then
  slimbench -m "${COMMON[@]}" method=numerical_pruning method.ratio=0.2,0.3 method.ratio_of=units "$@"
fi

slimbench leaderboard --model "$MODEL" --suite ppl --methods dense,numerical_pruning,flap \
  --markdown "$OUT/pruning-structured-$MODEL.md"
