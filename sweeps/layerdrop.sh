#!/usr/bin/env bash
# Layer dropping on SmolLM2-135M (30 blocks): dense; Attention Drop, MLP Drop and Block Drop
# removing 4, 8 and 12 modules; ShortGPT removing 4 and 8 blocks. Suite `ppl`: full WikiText-2
# test perplexity (2048-token windows), latency (prefill, decode tokens/s, KV-cache bytes per
# token) and size. Calibration: 256 windows x 2048 tokens as in the paper's code (which draws
# them from C4; offline they come from WikiText-2 validation, recorded in every run).
# Attention/MLP Drop share one cached calibration pass, Block Drop another, ShortGPT a third.
#
#   SLIMBENCH_DATA_DIR=../shared/data bash sweeps/layerdrop.sh
#
# Extra arguments go to every run; a quick end-to-end check on a tiny model:
#   MODEL=tiny-llama bash sweeps/layerdrop.sh model.config.num_hidden_layers=16 tracker=none \
#     eval.evaluators.perplexity.max_windows=2 calib.nsamples=4 calib.seqlen=256
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m}
# shellcheck source=sweeps/out.sh
source sweeps/out.sh
COMMON=(model="$MODEL" eval=ppl calib.nsamples=256 calib.seqlen=2048)

"$PY" -m slimbench.cli -m "${COMMON[@]}" method=dense "$@"
"$PY" -m slimbench.cli -m "${COMMON[@]}" method=attn_drop,mlp_drop,block_drop method.drop_n=4,8,12 "$@"
"$PY" -m slimbench.cli -m "${COMMON[@]}" method=shortgpt method.drop_n=4,8 "$@"
"$PY" -m slimbench.cli leaderboard --model "$MODEL" --suite ppl --methods dense,attn_drop,mlp_drop,block_drop,shortgpt \
  --markdown "$OUT/layerdrop-$MODEL.md"
