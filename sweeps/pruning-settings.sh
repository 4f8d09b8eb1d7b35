# Settings shared by sweeps/pruning.sh and sweeps/pruning-structured.sh (sourced, not run), so
# that both scripts' runs fall into one protocol group and share the dense run.
PYTHON=${PYTHON:-.venv/bin/python}    # runs this checkout's code (python -m slimbench.cli)
MODEL=${MODEL:-smollm2-135m}
# shellcheck source=sweeps/out.sh
source sweeps/out.sh
NSAMPLES=${NSAMPLES:-128}             # calibration windows
SEQLEN=${SEQLEN:-2048}                # calibration window length
WINDOWS=${WINDOWS:-null}              # perplexity windows (null = the whole test split)
EVAL_SEQLEN=${EVAL_SEQLEN:-2048}      # perplexity window length

slimbench() { "$PYTHON" -m slimbench.cli "$@"; }

COMMON=(
  "model=$MODEL" eval=ppl seed=0
  "calib.nsamples=$NSAMPLES" "calib.seqlen=$SEQLEN" calib.seed=0
  "eval.evaluators.perplexity.seqlen=$EVAL_SEQLEN" "eval.evaluators.perplexity.max_windows=$WINDOWS"
)
