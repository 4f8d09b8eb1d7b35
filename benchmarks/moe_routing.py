"""MoEfied SmolLM2-135M: routers x top-k / top-p routing, perplexity against mean active experts,
and latency against active experts (issue 21's acceptance table).

Everything runs through slimbench's own code paths: the model is ``model=smollm2-135m-moe``
(loader ``moefied``: E = 16 experts of 96 neurons per FFN, balanced k-means on [gate; up]
rows), routing is the ``moe_topk`` / ``moe_topp`` methods (hooks on every MoEfied MLP, removed
after each point), perplexity is slimbench's evaluator, mean active experts are the hooks'
counts (``slimbench.moe.metrics``).

1. Perplexity grid: routers oracle / similarity / mlp x top-k (k in --k) and top-p (p in --p);
   WikiText-2 test, the first --windows windows of --seqlen tokens. The MLP router trains per
   layer on the first min(16,384, --calib-samples x 2048) FFN-input tokens of the calibration draw (--calib-samples windows
   of 2048 from WikiText-2 validation; cached). All experts (k = E) = the dense model.
2. The paper's claim "at equal mean active experts top-p beats top-k": for each top-p point,
   the top-k perplexity at the same mean active experts, linearly interpolated between the
   neighbouring k (in log perplexity).
3. Latency of layer 0's FFN: grouped dispatch with k random experts per token (k = 1..E),
   T = 2048 (prefill) and T = 1 (decode), against the dense FFN (the experts' rows
   concatenated: the same function), medians in one process; plus the whole-model perplexity
   pass time of every grid point (wall seconds for --windows x --seqlen tokens).

    cd /work/wt-moe && flock /work/bench.lock env PYTHONPATH=. /work/main/.venv/bin/python \\
        benchmarks/moe_routing.py --data-dir /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.evaluation import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
from slimbench.methods import METHODS
from slimbench.models.adapters import get_path
from slimbench.moe.dispatch import grouped_dispatch
from slimbench.moe.metrics import routing_metrics
from slimbench.run import compress

from moe_clustering import median_ms  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from quant_kernel_check import resolve_named_model  # noqa: E402


def perplexity(bundle, args) -> tuple[float, float]:
    ev = Perplexity(PerplexityConfig(max_windows=args.windows, seqlen=args.seqlen))
    ctx = EvalContext(data_dir=args.data_dir, device="cpu", seed=0, threads=torch.get_num_threads())
    ev.check(ctx)
    start = time.perf_counter()
    result = ev(bundle, ctx)
    return next(m.value for m in result.metrics if m.name == "perplexity"), time.perf_counter() - start


def point(bundle, calib, method: str, params: dict, args) -> dict:
    cls = METHODS.get(method)
    m = cls(cls.Config(**params))
    report = compress(m, bundle, calib)
    before = bundle.hooks.counters()
    ppl, seconds = perplexity(bundle, args)
    metrics, summary = routing_metrics(None, before, bundle.hooks.counters())
    bundle.hooks.remove_all(f"{method}/")
    row = {"method": method, **params, "ppl": ppl, "experts_per_token": metrics[0].value, "eval_s": seconds,
           "distribution": summary["experts_per_token_distribution"],
           "per_layer": [v["experts_per_token"] for v in summary["per_layer"].values()]}
    sel = report.stages[0].details.get("selection_metric_top20pct")
    if sel:
        row["selection_metric_top20pct_mean"] = {k: statistics.mean(v) for k, v in sel.items()}
    print(json.dumps({k: v for k, v in row.items() if k not in ("per_layer", "distribution")}), flush=True)
    return row


def interpolate_topk(topk: list[dict], experts: float) -> float | None:
    """Top-k perplexity at ``experts`` mean active experts (log-linear between neighbouring k)."""
    pts = sorted((r["experts_per_token"], math.log(r["ppl"])) for r in topk)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= experts <= x1:
            return math.exp(y0 + (y1 - y0) * (experts - x0) / (x1 - x0))
    return None


# -- latency ------------------------------------------------------------------------------------------
def dense_ffn(experts):
    """The dense SwiGLU FFN the experts were sliced from (their rows concatenated: the same function)."""
    cat = lambda part, dim: torch.cat([getattr(e, part).weight for e in experts.experts], dim=dim)  # noqa: E731
    gate, up, down = cat("gate_proj", 0), cat("up_proj", 0), cat("down_proj", 1)  # [F, D], [F, D], [D, F]
    act = experts.experts[0].act_fn
    return lambda x: torch.nn.functional.linear(act(torch.nn.functional.linear(x, gate)) * torch.nn.functional.linear(x, up), down)


def latency_study(bundle, args) -> list[dict]:
    mlp = get_path(bundle.adapter.get_blocks(bundle.model)[0], bundle.adapter.moe.block)
    experts, E = mlp.experts, mlp.num_experts
    dense = dense_ffn(experts)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for T, reps in ((2048, args.reps_t2048), (1, args.reps_t1)):
            x = torch.randn(T, bundle.model.config.hidden_size, generator=gen)
            ref = dense(x)  # all experts = the dense FFN, up to float32 summation order (scale-relative tolerance)
            torch.testing.assert_close(grouped_dispatch(x, torch.ones(T, E, dtype=torch.bool), experts)[0], ref, rtol=1e-4,
                                       atol=1e-5 * float(ref.abs().max()))
            for k in range(1, E + 1):
                order = torch.rand(T, E, generator=gen).argsort(dim=-1)[:, :k]
                mask = torch.zeros(T, E, dtype=torch.bool).scatter_(-1, order, True)
                dense_ms = median_ms(lambda: dense(x), reps)  # re-measured next to every k (load drifts)
                moe_ms = median_ms(lambda: grouped_dispatch(x, mask, experts), reps)
                row = {"T": T, "k": k, "dense_ms": dense_ms, "moe_ms": moe_ms, "ratio": moe_ms / dense_ms}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


# -- report -------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    a = result["args"]
    out = [
        f"# MoEfied {result['model']}: routers x top-k / top-p (benchmarks/moe_routing.py)",
        "",
        f"Model `{result['model']}`: E = {result['experts']} experts of {result['expert_neurons']} neurons per FFN "
        f"(balanced k-means on normalised [gate; up] rows), all {result['layers']} layers. Perplexity: WikiText-2 test, "
        f"first {a['windows']} windows of {a['seqlen']} tokens (reduced protocol). MLP router: trained per layer on "
        f"the first {min(16384, a['calib_samples'] * 2048):,} FFN-input tokens ({a['calib_samples']} x 2048 WikiText-2 validation "
        "windows; 90% train, 10% validate). Mean active "
        f"experts per token: counted by the routing hooks (mean over the {result['layers']} layers). MoEfied experts are summed with weight 1.",
        "",
        f"All experts (= dense): perplexity **{result['all_experts']['ppl']:.3f}** (eval {result['all_experts']['eval_s']:.0f} s).",
        "",
        "| router | rule | k / p | mean active experts | perplexity | eval s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["grid"]:
        rule, val = ("top-k", r["k"]) if r["method"] == "moe_topk" else ("top-p", r["p"])
        out.append(f"| {r['router']} | {rule} | {val} | {r['experts_per_token']:.2f} | {r['ppl']:.3f} | {r['eval_s']:.0f} |")
    out += ["", "## At equal mean active experts: top-p vs top-k", "",
            "Top-k perplexity interpolated (log-linear) between the neighbouring k at the top-p point's mean active experts.", "",
            "| router | p | mean active experts | top-p ppl | top-k ppl (interp.) | top-p better |", "|---|---|---|---|---|---|"]
    for c in result["claim"]:
        tk = "n/a" if c["topk_ppl"] is None else f"{c['topk_ppl']:.3f}"
        better = "n/a" if c["topk_ppl"] is None else ("yes" if c["topp_ppl"] < c["topk_ppl"] else "no")
        out.append(f"| {c['router']} | {c['p']} | {c['experts']:.2f} | {c['topp_ppl']:.3f} | {tk} | {better} |")
    out += ["", f"Verdict: {result['verdict']}", "", "## Latency of one FFN (layer 0) against active experts", "",
            "Grouped dispatch with k random experts per token vs the dense FFN (same weights), medians (ms), one process, "
            f"{result.get('latency_threads', '?')} threads, 2-core CPU." if result["latency"] else "Not measured in this run.", "",
            "| T | k | dense ms | MoE ms | MoE / dense |", "|---|---|---|---|---|"]
    for r in result["latency"]:
        out.append(f"| {r['T']} | {r['k']} | {r['dense_ms']:.3f} | {r['moe_ms']:.3f} | {r['ratio']:.2f} |")
    for T, k in result["crossover"].items():
        out.append("")
        out.append(f"Crossover at T = {T}: grouped dispatch is faster than the dense FFN for k <= {k} of {result['experts']} experts." if k
                   else f"Crossover at T = {T}: grouped dispatch is never faster than the dense FFN.")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"oracle": "tab:green", "similarity": "tab:orange", "mlp": "tab:blue"}
    for router, colour in colours.items():
        for method, style, label in (("moe_topk", "-o", "top-k"), ("moe_topp", "--s", "top-p")):
            rows = sorted((r for r in result["grid"] if r["router"] == router and r["method"] == method), key=lambda r: r["experts_per_token"])
            if rows:
                ax.plot([r["experts_per_token"] for r in rows], [r["ppl"] for r in rows], style, color=colour, label=f"{router} {label}")
    ax.axhline(result["all_experts"]["ppl"], color="k", lw=0.8, ls=":", label="all experts (dense)")
    ax.set_yscale("log")
    ax.set_xlabel(f"mean active experts per token (of {result['experts']})")
    ax.set_ylabel("WikiText-2 perplexity (reduced windows)")
    ax.set_title("MoEfied SmolLM2-135M: routing")
    ax.legend(fontsize=7)
    for T, style in ((2048, "-o"), (1, "-s")):
        rows = [r for r in result["latency"] if r["T"] == T]
        bx.plot([r["k"] for r in rows], [r["ratio"] for r in rows], style, label=f"T = {T}")
    bx.axhline(1.0, color="k", lw=0.8, ls=":", label="dense FFN")
    bx.set_xlabel(f"active experts per token k (of {result['experts']})")
    bx.set_ylabel("FFN time / dense FFN time (layer 0)")
    bx.set_title("Grouped dispatch latency")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-moe")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--routers", nargs="+", default=["oracle", "similarity", "mlp"])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    parser.add_argument("--p", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--reps-t2048", type=int, default=5)
    parser.add_argument("--reps-t1", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/moe_routing"))
    parser.add_argument("--from-json", type=Path, help="only re-render the table and plot of a finished run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--skip-latency", action="store_true", help="the perplexity grid only (latency later, on an idle machine)")
    parser.add_argument("--latency-only", action="store_true", help="with --from-json: add the latency study to that run's results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.latency_only:
        if not args.from_json:
            parser.error("--latency-only needs --from-json (the grid run's results)")
        result = json.loads(args.from_json.read_text())
        source, loader, config, ctx = resolve_named_model(result["model"])
        bundle = loader.load(source, config, ctx)
        add_latency(result, bundle, args)
        write(result, args.out)
        return
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        args.out.with_suffix(".md").write_text(markdown(result))
        plot(result, args.out.with_suffix(".png"))
        return

    source, loader, config, ctx = resolve_named_model(args.model)
    start = time.perf_counter()
    bundle = loader.load(source, config, ctx)
    load_s = time.perf_counter() - start
    print(json.dumps({"load_s": load_s}), flush=True)
    calib = build_calibration_set(CalibConfig(nsamples=args.calib_samples, seqlen=2048, seed=0),
                                  resolve_corpus("wikitext2", "validation", args.data_dir), bundle.tokenizer)
    calib.cache_dir = ctx.cache_dir

    mlp0 = get_path(bundle.adapter.get_blocks(bundle.model)[0], bundle.adapter.moe.block)
    ppl, seconds = perplexity(bundle, args)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "load_s": load_s,
              "experts": mlp0.num_experts, "layers": len(bundle.adapter.get_blocks(bundle.model)), "model": args.model, "expert_neurons": mlp0.experts.experts[0].gate_proj.out_features,
              "all_experts": {"ppl": ppl, "eval_s": seconds}, "grid": []}
    print(json.dumps(result["all_experts"]), flush=True)
    for router in args.routers:
        for k in args.k:
            result["grid"].append(point(bundle, calib, "moe_topk", {"k": k, "router": router}, args))
        for p in args.p:
            result["grid"].append(point(bundle, calib, "moe_topp", {"p": p, "router": router}, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".partial.json").write_text(json.dumps(result, indent=1))  # an interrupted run keeps its points

    result["claim"] = []
    for router in args.routers:
        topk = [r for r in result["grid"] if r["router"] == router and r["method"] == "moe_topk"]
        topk.append({"experts_per_token": float(result["experts"]), "ppl": ppl})  # k = E: all experts
        for r in (r for r in result["grid"] if r["router"] == router and r["method"] == "moe_topp"):
            result["claim"].append({"router": router, "p": r["p"], "experts": r["experts_per_token"], "topp_ppl": r["ppl"],
                                    "topk_ppl": interpolate_topk(topk, r["experts_per_token"])})
    judged = [c for c in result["claim"] if c["topk_ppl"] is not None]
    wins = sum(c["topp_ppl"] < c["topk_ppl"] for c in judged)
    result["verdict"] = f"top-p has the lower perplexity at equal mean active experts in {wins} of {len(judged)} matched points"

    result["latency"], result["crossover"] = [], {}
    if not args.skip_latency:
        add_latency(result, bundle, args)
    write(result, args.out)


def add_latency(result: dict, bundle, args) -> None:
    result["latency"] = latency_study(bundle, args)
    result["latency_threads"] = torch.get_num_threads()
    result["crossover"] = {}
    for T in (2048, 1):
        k_faster = 0  # the largest k such that every k' <= k is faster than dense
        for r in sorted((r for r in result["latency"] if r["T"] == T), key=lambda r: r["k"]):
            if r["ratio"] >= 1:
                break
            k_faster = r["k"]
        result["crossover"][T] = k_faster or None


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
