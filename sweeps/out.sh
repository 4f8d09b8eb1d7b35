# Where a sweep's files go (sourced by the sweep scripts once MODEL is set). The reference model's
# tables go to results/leaderboards (committed) and its records to the results store
# (SLIMBENCH_RESULTS_DIR, default results/runs). Any other model is a smoke test: its tables and
# records go to one temporary directory, never into committed results (OUT and
# SLIMBENCH_RESULTS_DIR still win when set).
if [[ "$MODEL" == smollm2-135m ]]; then
  OUT=${OUT:-results/leaderboards}
else
  OUT=${OUT:-$(mktemp -d -t "slimbench-$MODEL-XXXXXX")}
  export SLIMBENCH_RESULTS_DIR=${SLIMBENCH_RESULTS_DIR:-$OUT/runs}
  echo "smoke test ($MODEL): tables and records go to $OUT" >&2
fi
export OUT
