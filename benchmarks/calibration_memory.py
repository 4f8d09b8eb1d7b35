"""Peak memory of the calibration engine vs model depth (not a test).

Builds Llama models of the same width and different depths offline, runs the engine with a
Gram-matrix observer on every linear input (as SparseGPT/GPTQ do) and reports the growth of
peak RSS during the run over the RSS before it. Each depth runs in a fresh process so the
high-water marks do not mix. If memory grew with depth, the deeper model would show a larger
growth; the engine holds one block's activations at a time, so the growth should be flat.

    .venv/bin/python benchmarks/calibration_memory.py [--depths 4 8 16] [--hidden 512] [--seqlen 512] [--nsamples 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(depth: int, hidden: int, seqlen: int, nsamples: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slimbench._system import measure_peak_rss, rss_bytes
    from slimbench.calibration import CalibrationEngine, LinearInputs, Step
    from slimbench.data.sampler import CalibConfig, CalibrationSet
    from slimbench.data.corpora import CorpusRef
    from slimbench.models.adapters import adapter_for
    from slimbench.models.bundle import ModelBundle, ModelSource

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=depth,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=seqlen)
    model = LlamaForCausalLM(cfg).eval()
    source = ModelSource(name=f"llama-d{depth}", kind="causal_lm", loader="from_config", model_type="llama")
    bundle = ModelBundle(model, None, "causal_lm", adapter_for("llama"), source)
    ids = torch.randint(0, 1024, (nsamples, seqlen))
    calib = CalibrationSet(ids, CalibConfig(nsamples=nsamples, seqlen=seqlen), CorpusRef("random", "-", "local", None, None))
    roles = ["q", "o", "gate", "down"]
    plan = lambda i, block: [Step({"in": LinearInputs(roles, {"gram"})}, compress=lambda stats: None)]  # noqa: E731
    before = rss_bytes()
    with measure_peak_rss() as peak:
        CalibrationEngine(bundle, calib, progress=False).run(plan, propagate_error=True)
    activations = nsamples * seqlen * hidden * 4
    return {
        "depth": depth,
        "params_MiB": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
        "rss_before_MiB": before / 2**20,
        "peak_growth_MiB": (peak.peak_rss_bytes - before) / 2**20,
        "one_block_activations_MiB": activations / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--child", type=int, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.hidden, args.seqlen, args.nsamples)))
        return
    rows = []
    for depth in args.depths:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(depth), "--hidden", str(args.hidden), "--seqlen", str(args.seqlen),
             "--nsamples", str(args.nsamples)], capture_output=True, text=True, check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| depth | params MiB | RSS before MiB | peak growth during calibration MiB | one block's activations (inputs) MiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r['params_MiB']:.0f} | {r['rss_before_MiB']:.0f} | {r['peak_growth_MiB']:.0f} | {r['one_block_activations_MiB']:.0f} |")


if __name__ == "__main__":
    main()
