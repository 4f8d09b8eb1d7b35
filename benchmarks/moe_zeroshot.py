"""MoEfied SmolLM2-135M on zero-shot tasks at matched mean active experts (issue 21's acceptance:
PIQA and ARC-Easy, lm-eval, full splits).

Each point is an ordinary slimbench run in the results store (one full PIQA + ARC-Easy pass is
13,177 loglikelihood requests: about an hour at 1 thread on a 2-core CPU), e.g.

    slimbench model=smollm2-135m-moe method=moe_topp method.p=0.9 method.router=mlp \\
        calib.nsamples=8 calib.seqlen=2048 eval=zeroshot 'eval.evaluators.zeroshot.tasks=[piqa,arc_easy]'
    slimbench model=smollm2-135m-moe method=moe_topk method.k=14 method.router=mlp ...   (and k=15)

(8 x 2048 calibration windows: the MLP router of benchmarks/moe_routing.py, the same cache
entry). This script reads the store and writes the table, the matched comparison and a plot:

    python benchmarks/moe_zeroshot.py --results-dir results/runs --out results/benchmarks/moe_zeroshot

Matched comparison: for every top-p run, the top-k accuracy of the same router at the top-p
run's measured mean active experts on the same tasks' tokens (``moe.zeroshot.experts_per_token``),
linearly interpolated between the two top-k runs that bracket it. With all E experts the MoEfied
model is the dense model (tests/test_moe_*), so a dense zero-shot record of the base model in the
store (``--dense-model``), or ``--dense`` values given by hand with their source, stand for k = E.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from slimbench.store import ResultStore

TASKS = (("piqa", "acc", "PIQA acc"), ("arc_easy", "acc", "ARC-e acc"), ("arc_easy", "acc_norm", "ARC-e acc_norm"))
SPLIT_SIZE = {"piqa": 1838, "arc_easy": 2376}  # PIQA validation, ARC-Easy test: the full splits lm-eval scores
ROUTING = ("moe_topk", "moe_topp")


def collect(store: ResultStore, model: str, dense_model: str | None, experts: int) -> list[dict]:
    """One row per finished zero-shot run of ``model`` routed by top-k / top-p (plus the dense
    base model's run as k = E, when the store has it)."""
    rows = []
    for rec in store.latest():
        if rec.status != "ok":
            continue
        metrics = {m.key: m for m in rec.metrics}
        if not all(f"zeroshot.{t}.{m}" in metrics for t, m, _ in TASKS):
            continue
        name = rec.model.get("name")
        if name == model and rec.method_name in ROUTING:
            cfg = rec.stages[0].get("config") or {}
            row = {"rule": "top-k" if rec.method_name == "moe_topk" else "top-p", "router": cfg.get("router"),
                   "param": cfg.get("k") if rec.method_name == "moe_topk" else cfg.get("p"),
                   "experts": metrics["moe.zeroshot.experts_per_token"].value,
                   "active_params": metrics["moe.zeroshot.active_expert_params_per_token"].value}
        elif dense_model and name == dense_model and rec.method_name == "dense":
            row = {"rule": "all experts", "router": "-", "param": experts, "experts": float(experts), "active_params": None}
        else:
            continue
        limits = {(p or {}).get("limit") for k, p in rec.protocols.items() if k.startswith("zeroshot")}
        if limits != {None}:
            continue  # not the full splits
        for t, m, label in TASKS:
            row[label] = metrics[f"zeroshot.{t}.{m}"].value
            row[label + " se"] = metrics[f"zeroshot.{t}.{m}"].stderr
        row.update(run_id=rec.run_id, eval_s=rec.timings.get("eval_zeroshot_s"))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["router"], r["rule"], r["experts"]))


def matched(rows: list[dict]) -> list[dict]:
    """Each top-p run against top-k (same router, or all experts) interpolated at its mean experts."""
    out = []
    for tp in (r for r in rows if r["rule"] == "top-p"):
        topk = [r for r in rows if (r["rule"] == "top-k" and r["router"] == tp["router"]) or r["rule"] == "all experts"]
        item = {"router": tp["router"], "p": tp["param"], "experts": tp["experts"], "tasks": {}}
        # the two top-k runs that bracket top-p's mean experts; linear between them, stderrs with the same weights
        lo = max((r for r in topk if r["experts"] <= tp["experts"]), key=lambda r: r["experts"], default=None)
        hi = min((r for r in topk if r["experts"] >= tp["experts"]), key=lambda r: r["experts"], default=None)
        w = None if lo is None or hi is None else 0.0 if hi["experts"] == lo["experts"] else (tp["experts"] - lo["experts"]) / (hi["experts"] - lo["experts"])
        for _, _, label in TASKS:
            k_acc = se = None
            if w is not None:
                k_acc = (1 - w) * lo[label] + w * hi[label]
                if lo[label + " se"] is not None and hi[label + " se"] is not None:
                    se = math.hypot((1 - w) * lo[label + " se"], w * hi[label + " se"])
            diff = None if k_acc is None else tp[label] - k_acc
            diff_se = None if se is None or tp[label + " se"] is None else math.hypot(se, tp[label + " se"])
            item["tasks"][label] = {"topp": tp[label], "topk": k_acc, "diff": diff, "diff_se": diff_se,
                                    "bracket": None if k_acc is None else [lo["param"], hi["param"]]}
        out.append(item)
    return out


def verdict(diff: float | None, se: float | None) -> str:
    if diff is None:
        return "no bracketing top-k runs"
    if se is None:
        return "top-p higher" if diff > 0 else "top-p lower"
    if abs(diff) <= 2 * se:
        return f"within 2 se ({diff:+.4f} ± {se:.4f})"
    return f"top-p {'higher' if diff > 0 else 'lower'} ({diff:+.4f} ± {se:.4f})"


def markdown(rows: list[dict], claims: list[dict], args) -> str:
    out = [f"# {args.model}: zero-shot accuracy against mean active experts (benchmarks/moe_zeroshot.py)", "",
           "lm-eval 0-shot on the full splits (PIQA validation, 1,838 questions; ARC-Easy test, 2,376), one slimbench run "
           "per point from the results store. Mean active experts per token: counted by the routing hooks over every token "
           "of the zero-shot forward passes (mean over the 30 MoE layers; lm-eval's right padding inside a batch of 8 "
           "length-sorted requests is routed and counted too). MoEfied experts are summed with weight 1. "
           "The MLP router is trained on 8 x 2048 WikiText-2 validation windows (the router of moe_routing.md). "
           "Accuracies are fractions, ± lm-eval's standard error.", "",
           "| router | rule | k / p | mean active experts | " + " | ".join(label for _, _, label in TASKS) + " | eval s | run_id |",
           "|---|---|---|---|" + "---|" * len(TASKS) + "---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[label]:.4f} ± {r[label + ' se']:.4f}" if r[label + " se"] is not None else f"{r[label]:.4f}"
                           for _, _, label in TASKS)
        eval_s = f"{r['eval_s']:.0f}" if r["eval_s"] is not None else "-"
        out.append(f"| {r['router']} | {r['rule']} | {r['param']} | {r['experts']:.2f} | {cells} | {eval_s} | {r['run_id'] if r['run_id'].startswith('(') else r['run_id'][:10]} |")
    if args.dense:
        out += ["", f"The all-experts row (= the dense model) is copied from {args.dense_source} (the dense model's own run "
                "on the same tasks and splits); its standard errors are lm-eval's formula for a mean of 0/1 scores, "
                "sqrt(acc (1 - acc) / (n - 1))."]
    out += ["", "## At equal mean active experts: top-p vs top-k", "",
            "Top-k accuracy linearly interpolated between the two top-k runs (same router) that bracket the top-p run's "
            "mean active experts; the difference's standard error combines the three runs' lm-eval standard errors as if "
            "independent. The runs score the same questions, so this overstates the noise of the difference (lm-eval's "
            "per-question scores, which a paired test needs, are not kept in the records).", "",
            "| router | p | mean active experts | task | top-p | top-k (interp.) | bracket k | top-p - top-k |", "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        for label, t in c["tasks"].items():
            topk = "n/a" if t["topk"] is None else f"{t['topk']:.4f}"
            bracket = "-" if t["bracket"] is None else f"{t['bracket'][0]}-{t['bracket'][1]}"
            out.append(f"| {c['router']} | {c['p']} | {c['experts']:.2f} | {label} | {t['topp']:.4f} | {topk} | {bracket} | "
                       f"{verdict(t['diff'], t['diff_se'])} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4.2))
    chance = {"PIQA acc": 0.5, "ARC-e acc": 0.25, "ARC-e acc_norm": 0.25}
    for ax, (_, _, label) in zip(axes, TASKS):
        for router in sorted({r["router"] for r in rows if r["rule"] != "all experts"}):
            for rule, style in (("top-k", "-o"), ("top-p", "s")):
                pts = sorted((r["experts"], r[label], r[label + " se"] or 0.0) for r in rows  # top-k's curve ends at all experts
                             if (r["router"] == router and r["rule"] == rule) or (rule == "top-k" and r["rule"] == "all experts"))
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=3,
                                label=f"{router} {rule}")
        for r in (r for r in rows if r["rule"] == "all experts"):
            ax.axhline(r[label], color="k", lw=0.8, ls=":", label="all experts (dense)")
        ax.axhline(chance[label], color="grey", lw=0.8, ls="--", label="chance")
        ax.set_xlabel("mean active experts per token (of 16)")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{args.model}: zero-shot accuracy vs active experts (lm-eval, full splits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-moe")
    parser.add_argument("--experts", type=int, default=16, help="E of the MoEfied model (all experts = dense)")
    parser.add_argument("--dense-model", default="smollm2-135m", help="the base model whose dense zero-shot record stands for k = E")
    parser.add_argument("--dense", type=float, nargs=len(TASKS), metavar="ACC",
                        help="the dense accuracies (" + ", ".join(label for _, _, label in TASKS) + ") when the store has no dense record")
    parser.add_argument("--dense-source", default="results/leaderboards/zeroshot-smollm2-135m.md")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/moe_zeroshot"))
    args = parser.parse_args()
    if not args.results_dir.is_dir():
        parser.error(f"--results-dir {args.results_dir} is not a directory")
    rows = collect(ResultStore(args.results_dir), args.model, args.dense_model, args.experts)
    if args.dense and not any(r["rule"] == "all experts" for r in rows):
        row = {"rule": "all experts", "router": "-", "param": args.experts, "experts": float(args.experts), "active_params": None,
               "run_id": f"({args.dense_source})", "eval_s": None}
        for (task, _, label), value in zip(TASKS, args.dense):  # lm-eval's stderr of a mean of 0/1 scores
            row.update({label: value, label + " se": math.sqrt(value * (1 - value) / (SPLIT_SIZE[task] - 1))})
        rows.append(row)
    if not any(r["rule"] != "all experts" for r in rows):
        raise SystemExit(f"moe_zeroshot: no finished full-split PIQA + ARC-Easy runs of {args.model} with moe_topk/moe_topp in {args.results_dir}")
    claims = matched(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "matched": claims}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, claims, args))
    plot(rows, args, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
