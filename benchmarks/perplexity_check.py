"""Harness perplexity vs an independent plain loop, in one process (not a test).

Loads SmolLM2-135M through slimbench, then evaluates WikiText-2 raw test at seqlen 2048:
  1. a plain loop of a few lines that reads the raw file itself and calls the model directly;
  2. slimbench's perplexity evaluator.
Prints both perplexities, their relative difference, and the tokens/s ratio harness/plain.

    .venv/bin/python benchmarks/perplexity_check.py [--data-dir ../shared/data] [--max-windows N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
from slimbench.models.loaders import LoadContext, resolve_model

REPO = Path(__file__).resolve().parents[1]


def plain_loop(model, tokenizer, raw_file: Path, seqlen: int, max_windows: int | None):
    lines = raw_file.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "\n\n".join("" if line == " \n" else line for line in lines)  # the HF rows, joined
    ids = tokenizer(text, return_tensors="pt").input_ids
    n = ids.shape[1] // seqlen if max_windows is None else min(ids.shape[1] // seqlen, max_windows)
    nlls, start = [], time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            batch = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(batch).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), batch[0, 1:])
            nlls.append(loss.float() * seqlen)
    elapsed = time.perf_counter() - start
    return math.exp(torch.stack(nlls).sum().item() / (n * seqlen)), n * seqlen / elapsed, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SLIMBENCH_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "perplexity_check.json"))
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}"])
    ctx = LoadContext(cache_dir=Path(OmegaConf.to_container(cfg.paths, resolve=True)["cache_dir"]).expanduser())
    source, loader, loader_cfg = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), ctx)
    bundle = loader.load(source, loader_cfg, ctx)
    print(f"model {source.name}: {sum(p.numel() for p in bundle.model.parameters()):,} params, threads {torch.get_num_threads()}")

    raw = Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw"
    plain_ppl, plain_tps, n = plain_loop(bundle.model, bundle.tokenizer, raw, args.seqlen, args.max_windows)
    print(f"plain loop: ppl {plain_ppl:.4f} over {n} windows, {plain_tps:.1f} tokens/s")

    evaluator = Perplexity(PerplexityConfig(seqlen=args.seqlen, max_windows=args.max_windows))
    eval_ctx = EvalContext(data_dir=Path(args.data_dir), device="cpu", seed=0, threads=torch.get_num_threads())
    evaluator.check(eval_ctx)
    result = evaluator(bundle, eval_ctx)
    metrics = {m.name: m.value for m in result.metrics}
    print(f"harness:    ppl {metrics['perplexity']:.4f} over {result.protocol['windows']} windows, "
          f"{metrics['eval_tokens_per_s']:.1f} tokens/s")

    summary = {
        "model": source.name,
        "seqlen": args.seqlen,
        "windows": n,
        "plain_ppl": plain_ppl,
        "harness_ppl": metrics["perplexity"],
        "relative_difference": abs(metrics["perplexity"] - plain_ppl) / plain_ppl,
        "plain_tokens_per_s": plain_tps,
        "harness_tokens_per_s": metrics["eval_tokens_per_s"],
        "throughput_ratio": metrics["eval_tokens_per_s"] / plain_tps,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
