#!/usr/bin/env bash
# Zero-shot accuracy table (lm-eval, 0-shot): SmolLM2-135M dense and magnitude 50% on PIQA,
# ARC-Easy, ARC-Challenge, BoolQ, WinoGrande, OpenBookQA and LAMBADA (OpenAI), full splits
# (suite `zeroshot`), then the leaderboard for that suite. Finished runs are skipped, so the
# script can be interrupted and re-run. More methods join through METHODS (e.g.
# METHODS=dense,magnitude,wanda once Wanda is merged; their parameters go in EXTRA).
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/zeroshot.sh                 # the full table (hours on CPU)
#   EVAL=zeroshot-quick bash sweeps/zeroshot.sh                              # first 50 docs per task
#   MODEL=tiny-llama EVAL=zeroshot-quick EXTRA="eval.evaluators.zeroshot.limit=2" bash sweeps/zeroshot.sh   # smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

SLIMBENCH=${SLIMBENCH:-.venv/bin/python -m slimbench.cli}
MODEL=${MODEL:-smollm2-135m}
EVAL=${EVAL:-zeroshot}
METHODS=${METHODS:-dense,magnitude}
SPARSITY=${SPARSITY:-0.5}
EXTRA=${EXTRA:-}

# shellcheck disable=SC2086  # word splitting of SLIMBENCH and EXTRA is intended
$SLIMBENCH -m model="$MODEL" eval="$EVAL" method="$METHODS" method.sparsity="$SPARSITY" $EXTRA
# shellcheck disable=SC2086
$SLIMBENCH leaderboard --model "$MODEL" --suite "$EVAL"
