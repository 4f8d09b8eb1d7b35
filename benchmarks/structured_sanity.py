"""Quick structured-pruning sanity check on a real model, in one process (not a test).

Loads the model once, prunes copies with Numerical Pruning and FLAP at the given parameter
ratios (one shared, cached calibration pass), then measures WikiText-2 test perplexity on a
few windows and latency (prefill + KV-cached decode) of dense and pruned models in
round-robin order, so that load on a shared machine affects all models alike.

    flock /work/bench.lock .venv/bin/python benchmarks/structured_sanity.py --nsamples 8 --seqlen 512 --windows 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.latency import Latency, LatencyConfig
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
from slimbench.methods.pruning.flap import Flap, FlapConfig
from slimbench.methods.pruning.numerical_pruning import NumericalPruning, NumericalPruningConfig
from slimbench.models.bundle import ModelBundle
from slimbench.models.loaders import LoadContext, resolve_model

REPO = Path(__file__).resolve().parents[1]


def load(model_name: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model_name}"])
    cache = Path(OmegaConf.to_container(cfg.paths, resolve=True)["cache_dir"]).expanduser()
    ctx = LoadContext(cache_dir=cache)
    source, loader, loader_cfg = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), ctx)
    return loader.load(source, loader_cfg, ctx), cache


def metrics_of(result) -> dict:
    return {m.name: m.value for m in result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SLIMBENCH_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "structured_sanity.json"))
    args = parser.parse_args()

    dense, cache = load(args.model)
    ref = resolve_corpus("wikitext2", "validation", Path(args.data_dir))
    calib = build_calibration_set(CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen, seed=0), ref, dense.tokenizer)
    calib.cache_dir = cache
    models: dict[str, ModelBundle] = {"dense": dense}
    summary: dict = {"model": args.model, "calibration": f"{args.nsamples}x{args.seqlen}", "runs": {}}
    for ratio in args.ratios:
        for label, method in (("numerical_pruning", NumericalPruning(NumericalPruningConfig(ratio=ratio, ratio_of="params"))),
                              ("flap", Flap(FlapConfig(ratio=ratio)))):
            bundle = ModelBundle(**{**vars(dense), "model": copy.deepcopy(dense.model)})
            d = method.apply(bundle, calib).details
            name = f"{label}@{ratio}"
            models[name] = bundle
            summary["runs"][name] = {k: d[k] for k in ("param_reduction", "unit_ratio_removed", "kv_groups_removed", "channels_removed", "guard_fired")}
            print(name, summary["runs"][name], flush=True)

    ctx = EvalContext(data_dir=Path(args.data_dir), device="cpu", seed=0, threads=torch.get_num_threads())
    ppl = Perplexity(PerplexityConfig(seqlen=2048, max_windows=args.windows))
    ppl.check(ctx)
    for name, bundle in models.items():
        summary["runs"].setdefault(name, {})["ppl"] = metrics_of(ppl(bundle, ctx))["perplexity"]
        summary["runs"][name]["params"] = sum(p.numel() for p in bundle.model.parameters())
    latency = Latency(LatencyConfig(prompt_len=128, new_tokens=32, warmup=1, repeats=3))
    samples: dict = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, bundle in models.items():
            samples[name].append(metrics_of(latency(bundle, ctx)))
    for name, runs in samples.items():
        for key in ("prefill_ms", "decode_tokens_per_s", "kv_cache_bytes_per_token"):
            summary["runs"][name][key] = statistics.median(r[key] for r in runs)
    summary["threads"] = torch.get_num_threads()
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
