#!/usr/bin/env bash
# Run an experiment preset (conf/experiment/<name>.yaml) and write its leaderboard:
#   bash sweeps/run.sh <experiment> [hydra overrides...]
# e.g.  SLIMBENCH_DATA_DIR=../shared/data bash sweeps/run.sh pruning
#       bash sweeps/run.sh budget hydra/launcher=parallel          # jobs in parallel, each in its own process
# The grid and its defaults live in the preset; the overrides go to every job and to the
# leaderboard, which selects exactly the experiment's runs. Finished runs are skipped, so the
# script can be interrupted and re-run. Output: results/leaderboards/<experiment>-<model>.{md,csv,html,json}
# and the Pareto plots <experiment>-<model>-pareto-{bytes,latency}.png (LEADERBOARD_DIR to change);
# with any other model (a smoke test) tables and records go to a temporary directory (sweeps/out.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash sweeps/run.sh <experiment> [overrides...]" >&2; exit 2; }
EXPERIMENT=$1; shift
PY=${PYTHON:-.venv/bin/python}
MODEL=smollm2-135m
for arg in "$@"; do
  case "$arg" in model=*) MODEL=${arg#model=} ;; esac
done
# shellcheck source=sweeps/out.sh
source sweeps/out.sh  # any model but the reference one is a smoke test: its files go to a temporary directory
"$PY" -m slimbench.cli -m experiment="$EXPERIMENT" "$@" || echo "sweeps/run.sh: some jobs did not succeed (see the table above); the leaderboard lists them" >&2
"$PY" -m slimbench.cli leaderboard --experiment "$EXPERIMENT" --out "${LEADERBOARD_DIR:-$OUT}" \
  --name "$EXPERIMENT-$MODEL" "$@"
