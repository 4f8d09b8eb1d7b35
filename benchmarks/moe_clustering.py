"""MoEfied SmolLM2-135M: how many experts, and where grouped dispatch beats the dense FFN.

1. Clustering study. For E in {8, 16, 32, 64} every SwiGLU FFN is split into E balanced
   k-means experts (``kmeans_gate_up``; plus the random split at E = 16 as the baseline) and
   routed by the oracle (true per-expert activation mass) to the top k = 25/50/75/100% of
   its experts. WikiText-2 perplexity on the first 8 test windows of 2048 tokens (the
   project's protocol, ``slimbench.evaluation.perplexity``), counted mean active experts and
   active FFN parameters per token. k = E must give the dense perplexity.
2. Routers at E = 16 (``--routers``): the similarity router and the MLP router (trained per
   layer on 8 x 2048 WikiText-2 validation tokens, the project's calibration draw) at the
   same k, and the MLP router with top-p at a few thresholds; the MLP router's selection
   metric per layer.
3. Dispatch latency of one MLP layer (layer 0): T = 1 and T = 2048 tokens, k = 1..E experts
   per token (each token's experts drawn at random), grouped dispatch over the sliced
   experts and over the same experts in the fused 3-D layout, against the dense MLP, all in
   one process (medians; routing cost listed separately).

    cd /work/wt-moe && SLIMBENCH_DATA_DIR=/work/shared/data flock /work/bench.lock \\
        env PYTHONPATH=. /work/main/.venv/bin/python benchmarks/moe_clustering.py --data-dir /work/shared/data

Routing is installed by replacing each MoEfied layer's forward for the duration of one
evaluation (a stand-in for the routing hooks of slimbench/hooks.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.moe.cache import cache_key, cached_tensors, layer_state, router_tensors
from slimbench.moe.dispatch import FusedExperts, grouped_dispatch
from slimbench.moe.moefication import MoEficationConfig, MoEfiedMLP, cluster_model, moefy
from slimbench.moe.routers import FFNInputs, MLPRouter, OracleRouter, RouterTrainConfig, SimilarityRouter, gate_centres, train_mlp_router
from slimbench.moe.routing import topk_mask, topp_mask

from quant_kernel_check import perplexity, resolve_named_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
REPORTED = ("selection_metric", "epoch", "similarity_selection_metric", "oracle_selection_metric", "train_tokens", "val_tokens")


# -- routing for one evaluation ------------------------------------------------------------------
@contextmanager
def routed(layers, rule):
    for m in layers:
        m.forward = functools.partial(m.forward_routed, rule=rule)
        m.stats.reset()
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def counted(layers) -> dict:
    tokens = layers[0].stats.tokens
    calls = [m.stats.expert_calls for m in layers]
    per_expert = layers[0].experts.params_per_expert()[0]
    hist = sum(m.stats.experts_per_token_hist for m in layers)
    return {
        "mean_active_experts": sum(calls) / (tokens * len(layers)),
        "active_ffn_params_per_token": sum(calls) * per_expert / tokens,
        "experts_per_token_hist": hist.tolist(),
    }


def evaluate(bundle, layers, rule, args) -> dict:
    with routed(layers, rule):
        ppl = perplexity(bundle, args.data_dir, args.windows, args.seqlen)
        return {"perplexity": ppl, **counted(layers)}


# -- MoEfication with cached labels --------------------------------------------------------------
def moefied_copy(dense_bundle, cfg: MoEficationConfig, cache_dir: Path) -> tuple:
    bundle = copy.deepcopy(dense_bundle)
    key = cache_key({"model": bundle.source.to_dict(), "moefication": dataclasses.asdict(cfg)})
    start = time.perf_counter()
    tensors, hit = cached_tensors(
        cache_dir / f"labels-{bundle.source.name}-{key}.safetensors",
        lambda: {"labels": cluster_model(bundle.model, bundle.adapter, cfg, n_jobs=torch.get_num_threads())},
        meta=dataclasses.asdict(cfg),
    )
    seconds = time.perf_counter() - start
    layers = moefy(bundle.model, bundle.adapter, tensors["labels"])
    return bundle, layers, {"clustering_s": None if hit else seconds, "labels_cached": hit}


def clustering_study(dense, args) -> list[dict]:
    rows = []
    settings = [(E, "kmeans_gate_up") for E in args.experts] + [(args.router_experts, "random")]
    for E, split in settings:
        bundle, layers, info = moefied_copy(dense, MoEficationConfig(num_experts=E, split=split), args.cache_dir)
        for layer in layers:
            layer.router = OracleRouter()
        fractions = FRACTIONS if split != "random" else FRACTIONS[:-1]
        for frac in fractions:
            k = max(1, round(frac * E))
            row = {"E": E, "split": split, "expert_neurons": args.d_ff // E, "router": "oracle", "rule": f"top-{k}", "k": k, "fraction": k / E, **info}
            row.update(evaluate(bundle, layers, functools.partial(topk_mask, k=k), args))
            print(json.dumps({k_: v for k_, v in row.items() if k_ != "experts_per_token_hist"}), flush=True)
            rows.append(row)
        del bundle, layers
    return rows


# -- routers at one E ----------------------------------------------------------------------------
def router_study(dense, args) -> tuple[list[dict], list[dict]]:
    E = args.router_experts
    cfg = MoEficationConfig(num_experts=E)
    bundle, layers, _ = moefied_copy(dense, cfg, args.cache_dir)
    calib_cfg = CalibConfig(nsamples=args.router_samples, seqlen=2048, seed=0)
    calib = build_calibration_set(calib_cfg, resolve_corpus("wikitext2", "validation", str(args.data_dir)), bundle.tokenizer)
    train_cfg = RouterTrainConfig()
    key = cache_key({"model": bundle.source.to_dict(), "moefication": dataclasses.asdict(cfg), "calibration": calib.fingerprint(), "router": dataclasses.asdict(train_cfg)})
    def train() -> dict:
        inputs = collect_ffn_inputs(bundle, layers, calib)
        routers, reports = [], []
        for i, (layer, h) in enumerate(zip(layers, inputs)):
            router, report = train_mlp_router(h, layer.experts, train_cfg)
            routers.append(router)
            reports.append(report)
            print(json.dumps({"layer": i, **{k: v for k, v in report.items() if k != "metric_per_epoch"}}), flush=True)
        per_layer = {f"report.{name}": torch.tensor([r[name] for r in reports], dtype=torch.float64) for name in REPORTED}
        return {**router_tensors(routers), **per_layer}

    start = time.perf_counter()
    tensors, hit = cached_tensors(args.cache_dir / f"mlp-routers-{bundle.source.name}-{key}.safetensors", train)
    train_s = time.perf_counter() - start
    reports = [{"layer": i, **{name: tensors[f"report.{name}"][i].item() for name in REPORTED}} for i in range(len(layers))]
    mlp_routers = []
    for i, layer in enumerate(layers):
        router = MLPRouter(torch.zeros(E, layer.experts.experts[0].gate_proj.in_features))
        router.load_state_dict(layer_state(tensors, i))
        mlp_routers.append(router)

    rows = []
    router_sets = {"similarity": [SimilarityRouter.from_experts(m.experts) for m in layers], "mlp": mlp_routers}
    rules = [(f"top-{k}", functools.partial(topk_mask, k=k)) for k in (E // 4, E // 2, 3 * E // 4)]
    for name, routers in router_sets.items():
        for layer, router in zip(layers, routers):
            layer.router = router
        chosen = rules + ([(f"top-p {p}", functools.partial(topp_mask, p=p)) for p in args.top_p] if name == "mlp" else [])
        for label, rule in chosen:
            row = {"E": E, "router": name, "rule": label, "router_train_s": None if hit else train_s}
            row.update(evaluate(bundle, layers, rule, args))
            print(json.dumps({k_: v for k_, v in row.items() if k_ != "experts_per_token_hist"}), flush=True)
            rows.append(row)
    return rows, reports


def collect_ffn_inputs(bundle, layers, calib) -> list[torch.Tensor]:
    """Every layer's FFN inputs over the calibration windows (the MoEfied model with all experts = dense)."""
    observers = [FFNInputs() for _ in layers]
    with bundle.hooks.scope() as hooks, torch.inference_mode():
        for block, obs in zip(bundle.adapter.get_blocks(bundle.model), observers):
            obs.attach(block, bundle.adapter, hooks)
        for sample in calib.samples():
            bundle.model(**sample)
    return [obs.result() for obs in observers]


# -- dispatch latency ------------------------------------------------------------------------------
def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def random_k_mask(T: int, E: int, k: int, gen: torch.Generator) -> torch.Tensor:
    order = torch.rand(T, E, generator=gen).argsort(dim=-1)[:, :k]
    return torch.zeros(T, E, dtype=torch.bool).scatter_(-1, order, True)


def fused_copy(experts) -> FusedExperts:
    gate_up = torch.stack([torch.cat([ex.gate_proj.weight, ex.up_proj.weight]) for ex in experts.experts])  # [E, 2I, D]
    down = torch.stack([ex.down_proj.weight for ex in experts.experts])  # [E, D, I]
    return FusedExperts(gate_up, down, experts.experts[0].act_fn)


def latency_study(dense, args) -> list[dict]:
    rows = []
    block = dense.adapter.get_blocks(dense.model)[0]
    dense_mlp = block.mlp
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for T in (1, 2048):
            reps = args.reps_t1 if T == 1 else args.reps_t2048
            x = torch.randn(T, args.d_model, generator=gen)
            for E in args.experts:
                mini = copy.deepcopy(block)
                cfg = MoEficationConfig(num_experts=E)
                key = cache_key({"model": dense.source.to_dict(), "moefication": dataclasses.asdict(cfg)})
                labels = cached_tensors(args.cache_dir / f"labels-{dense.source.name}-{key}.safetensors", _labels_missing)[0]["labels"]
                mlp_ = mini.mlp
                moe = MoEfiedMLP.from_mlp(mlp_.gate_proj, mlp_.up_proj, mlp_.down_proj, mlp_.act_fn, labels[0])
                fused = fused_copy(moe.experts)
                centres = gate_centres(moe.experts)
                sim, mlp = SimilarityRouter(centres), MLPRouter(centres)
                dense_ms = median_ms(lambda: dense_mlp(x), reps)
                route_ms = {
                    "similarity+top1": median_ms(lambda: topk_mask(sim.scores(x, moe.experts), 1), reps),
                    "mlp+top1": median_ms(lambda: topk_mask(mlp.scores(x, moe.experts), 1), reps),
                    "mlp+topp0.5": median_ms(lambda: topp_mask(torch.sigmoid(mlp.scores(x, moe.experts)), 0.5), reps),
                }
                for k in range(1, E + 1):
                    mask = random_k_mask(T, E, k, gen)
                    row = {
                        "T": T, "E": E, "k": k, "dense_ms": dense_ms,
                        "sliced_ms": median_ms(lambda: grouped_dispatch(x, mask, moe.experts), reps),
                        "fused_ms": median_ms(lambda: grouped_dispatch(x, mask, fused), reps),
                        "route_ms": route_ms,
                    }
                    row["dense_ms_after"] = median_ms(lambda: dense_mlp(x), reps) if k == E else None
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def _labels_missing():
    raise RuntimeError("labels must be cached by the clustering study first")


# -- report ------------------------------------------------------------------------------------------
def crossover(rows, T, E, column) -> int:
    """The largest k whose dispatch is faster than the dense MLP (0 if none)."""
    fast = [r["k"] for r in rows if r["T"] == T and r["E"] == E and r[column] < r["dense_ms"]]
    return max(fast, default=0)


def markdown(result: dict) -> str:
    lines = [
        f"# MoEfied {result['model']}: clustering study and dispatch latency (benchmarks/moe_clustering.py)",
        "",
        f"Perplexity: WikiText-2 test, first {result['windows']} windows x {result['seqlen']} tokens. Dense: **{result['dense_ppl']:.3f}**. "
        f"torch threads: {result['threads']}. Oracle = true per-expert mass |act(g)*u| summed over the expert's neurons.",
        "",
        f"## Oracle top-k by expert count (balanced k-means on [gate; up] rows; random split at E = {result['router_experts']})",
        "",
        "| E | split | neurons/expert | k | fraction | ppl | ppl / dense | mean active experts | active FFN params/token (M) | clustering s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["clustering"]:
        cs = "cached" if r["clustering_s"] is None else f"{r['clustering_s']:.0f}"
        lines.append(
            f"| {r['E']} | {r['split']} | {r['expert_neurons']} | {r['k']} | {r['fraction']:.2f} | {r['perplexity']:.3f} | "
            f"{r['perplexity'] / result['dense_ppl']:.3f} | {r['mean_active_experts']:.2f} | {r['active_ffn_params_per_token'] / 1e6:.2f} | {cs} |"
        )
    if result.get("routers"):
        lines += ["", f"## Routers at E = {result['router_experts']}", "", "| router | rule | ppl | mean active experts | experts/token histogram (all layers) |", "|---|---|---|---|---|"]
        for r in result["routers"]:
            hist = ", ".join(f"{k}:{n}" for k, n in enumerate(r["experts_per_token_hist"]) if n)
            lines.append(f"| {r['router']} | {r['rule']} | {r['perplexity']:.3f} | {r['mean_active_experts']:.2f} | {hist} |")
        metrics = [r["selection_metric"] for r in result["router_reports"]]
        sims = [r["similarity_selection_metric"] for r in result["router_reports"]]
        oracles = [r["oracle_selection_metric"] for r in result["router_reports"]]
        if metrics:
            lines += ["", f"MLP router selection metric (mass share of its top 20% experts, validation tokens), mean over layers: "
                      f"{statistics.mean(metrics):.3f} (min {min(metrics):.3f}, max {max(metrics):.3f}); similarity router {statistics.mean(sims):.3f}; oracle {statistics.mean(oracles):.3f}."]
    lines += ["", "## Dispatch latency, one MLP layer (layer 0), medians in ms", ""]
    for T in (1, 2048):
        lines += [f"### T = {T}", "", "| E | dense MLP | k=1 sliced / fused | k=E/4 | k=E/2 | k=3E/4 | k=E | crossover k (sliced, fused) |", "|---|---|---|---|---|---|---|---|"]
        for E in result["experts"]:
            rows = {r["k"]: r for r in result["latency"] if r["T"] == T and r["E"] == E}
            if not rows:
                continue
            cells = [f"{rows[k]['sliced_ms']:.3f} / {rows[k]['fused_ms']:.3f}" for k in (1, max(1, E // 4), E // 2, 3 * E // 4, E)]
            lines.append(
                f"| {E} | {rows[1]['dense_ms']:.3f} (after: {rows[E]['dense_ms_after']:.3f}) | " + " | ".join(cells)
                + f" | {crossover(result['latency'], T, E, 'sliced_ms')}, {crossover(result['latency'], T, E, 'fused_ms')} |"
            )
        lines.append("")
        route = [r for r in result["latency"] if r["T"] == T and r["k"] == 1]
        lines.append("Routing cost (router scores + rule), ms: " + "; ".join(
            f"E={r['E']}: " + ", ".join(f"{n} {v:.3f}" for n, v in r["route_ms"].items()) for r in route))
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--router-experts", type=int, default=16)
    parser.add_argument("--router-samples", type=int, default=8)
    parser.add_argument("--top-p", type=float, nargs="*", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--no-routers", action="store_true")
    parser.add_argument("--reps-t1", type=int, default=200)
    parser.add_argument("--reps-t2048", type=int, default=7)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/slimbench/moe").expanduser())
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/moe_clustering"))
    args = parser.parse_args()

    source, loader, cfg, ctx = resolve_named_model(args.model)
    dense = loader.load(source, cfg, ctx)
    dense.model.eval()
    args.d_model, args.d_ff = dense.model.config.hidden_size, dense.model.config.intermediate_size
    result = {"model": args.model, "windows": args.windows, "seqlen": args.seqlen, "threads": torch.get_num_threads(), "experts": args.experts}
    result["router_experts"] = args.router_experts
    result["dense_ppl"] = perplexity(dense, args.data_dir, args.windows, args.seqlen)
    print(json.dumps({"dense_ppl": result["dense_ppl"]}), flush=True)
    result["clustering"] = clustering_study(dense, args)
    if not args.no_routers:
        result["routers"], result["router_reports"] = router_study(dense, args)
    result["latency"] = latency_study(dense, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
