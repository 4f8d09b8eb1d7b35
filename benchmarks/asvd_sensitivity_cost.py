"""ASVD's sensitivity pass: the cost of one (layer, candidate) evaluation before and after the
exact shortcut (``calibration.SuffixObjective``: only blocks b.. and the head are re-run), and
the whole pass extrapolated to the reference setting (issue 26).

One process: SmolLM2 loaded once, ``--windows`` calibration windows of ``--seqlen`` tokens
(WikiText-2 validation, the GPTQ/Wanda draw, seed 0). Measured (median of ``--repeats``):
the whole-model objective (``CalibrationEngine.objective``: what every evaluation cost before)
and the suffix objective from blocks b in ``--blocks``; the two are also checked to be equal.
The pass over every decoder linear × candidate is then extrapolated: before = linears ×
candidates × t_whole; after = Σ over blocks of (linears in the block × candidates × t_suffix(b)),
with t_suffix(b) interpolated linearly between the measured blocks, plus the cost of advancing
the kept inputs (one block forward per block). Times scale with windows × tokens; the reference
setting (all 32 calibration windows of 2048 tokens) is the measured per-window time × 32.

    flock /work/bench.lock env PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/asvd_sensitivity_cost.py \\
        --data-dir ../shared/data --out results/benchmarks/asvd_sensitivity_cost
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from slimbench._system import cpu_name
from slimbench.calibration import CalibrationEngine, SuffixObjective
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.methods.lowrank.asvd import CANDIDATES
from slimbench.methods.lowrank.common import decoder_linears

from moe_clustering import median_ms  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from quant_kernel_check import resolve_named_model  # noqa: E402


def median_s(fn, repeats: int) -> float:
    return median_ms(fn, repeats, warmup=0) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-windows", type=int, default=32, help="calibration windows of the reference setting")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source, loader, config, ctx = resolve_named_model(args.model)
    bundle = loader.load(source, config, ctx)
    calib = build_calibration_set(CalibConfig(nsamples=args.windows, seqlen=args.seqlen, seed=0),
                                  resolve_corpus("wikitext2", "validation", args.data_dir), bundle.tokenizer)
    windows = list(calib.samples())
    engine = CalibrationEngine(bundle, calib, progress=False)
    blocks = len(bundle.adapter.get_blocks(bundle.model))
    targets = decoder_linears(bundle.model, bundle.adapter)
    per_block = [sum(t.block == b for t in targets) for b in range(blocks)]

    whole = median_s(lambda: engine.objective(windows), args.repeats)
    suffix = SuffixObjective(bundle, windows)
    t_suffix, t_advance, equal = {}, [], True
    for b in sorted(args.blocks):
        while suffix.block < b:
            start = time.perf_counter()
            suffix.advance()
            t_advance.append(time.perf_counter() - start)
        equal &= torch.equal(suffix.score(), engine.objective(windows))
        t_suffix[b] = median_s(suffix.score, args.repeats)
        print(json.dumps({"block": b, "suffix_s": t_suffix[b], "whole_s": whole}), flush=True)

    def interp(b: int) -> float:
        pts = sorted(t_suffix.items())
        for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
            if b0 <= b <= b1:
                return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
        return pts[0][1] if b < pts[0][0] else pts[-1][1]

    scale = args.reference_windows / args.windows
    cands = len(CANDIDATES)
    before = len(targets) * cands * whole * scale
    advance = statistics.mean(t_advance) * (blocks - 1) * scale if t_advance else 0.0
    after = sum(per_block[b] * cands * interp(b) for b in range(blocks)) * scale + advance
    result = {"model": args.model, "windows": args.windows, "seqlen": args.seqlen, "threads": torch.get_num_threads(),
              "cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "linears": len(targets), "candidates": cands, "whole_s": whole, "suffix_s": t_suffix,
              "advance_s_per_block": statistics.mean(t_advance) if t_advance else None, "equal": bool(equal),
              "reference_windows": args.reference_windows, "pass_before_h": before / 3600, "pass_after_h": after / 3600}
    lines = [f"# ASVD sensitivity pass on {args.model}: cost before and after the suffix shortcut", "",
             f"{result['cpu']}, {result['threads']} threads, torch {result['torch']}, {result['date']}. `benchmarks/asvd_sensitivity_cost.py`: "
             f"{args.windows} calibration window(s) of {args.seqlen} tokens, median of {args.repeats}; the suffix objective equals the "
             f"whole-model objective bitwise at every measured block: {result['equal']}.", "",
             "| evaluation | seconds per evaluation |", "|---|---|",
             f"| whole model (before) | {whole:.3f} |"]
    lines += [f"| from block {b} (after) | {t:.3f} |" for b, t in sorted(t_suffix.items())]
    lines += ["", f"Extrapolated whole sensitivity pass at the reference setting ({len(targets)} linears × {cands} candidates × "
              f"{args.reference_windows} windows of {args.seqlen}): before **{before / 3600:.1f} h**, after **{after / 3600:.1f} h** "
              f"({before / after:.2f}× faster; advancing the kept inputs included)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
