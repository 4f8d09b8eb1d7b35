#!/usr/bin/env bash
# Zero-shot accuracy table (lm-eval, 0-shot): SmolLM2-135M dense, Wanda 50% unstructured and
# RTN w4 g128 on PIQA, ARC-Easy, ARC-Challenge, BoolQ, WinoGrande, OpenBookQA and LAMBADA
# (OpenAI), full splits (suite `zeroshot`), then the leaderboard for that suite, also written to
# results/leaderboards/zeroshot-$MODEL.md. Wanda calibrates on 128 x 2048 WikiText-2 validation
# windows, seed 0 (the defaults). Finished runs are skipped, so the script can be interrupted
# and re-run. Other methods: METHODS (comma list) and PARAMS (their parameters; a parameter a
# method does not have is ignored for that method).
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/zeroshot.sh                 # the full table (hours on CPU)
#   EVAL=zeroshot-quick bash sweeps/zeroshot.sh                              # first 50 docs per task
#   MODEL=tiny-llama EVAL=zeroshot-quick EXTRA="eval.evaluators.zeroshot.limit=2 calib.nsamples=2 calib.seqlen=64" bash sweeps/zeroshot.sh   # smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

SLIMBENCH=${SLIMBENCH:-.venv/bin/python -m slimbench.cli}
MODEL=${MODEL:-smollm2-135m}
# shellcheck source=sweeps/out.sh
source sweeps/out.sh
EVAL=${EVAL:-zeroshot}
METHODS=${METHODS:-dense,wanda,rtn}
PARAMS=${PARAMS:-method.sparsity=0.5 method.bits=4 method.group_size=128}
EXTRA=${EXTRA:-}

# shellcheck disable=SC2086  # word splitting of SLIMBENCH, PARAMS and EXTRA is intended
$SLIMBENCH -m model="$MODEL" eval="$EVAL" method="$METHODS" $PARAMS $EXTRA
# shellcheck disable=SC2086
$SLIMBENCH leaderboard --model "$MODEL" --suite "$EVAL" --methods "$METHODS" --markdown "$OUT/zeroshot-$MODEL.md"
