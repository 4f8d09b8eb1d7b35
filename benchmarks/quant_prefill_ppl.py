"""Perplexity of the CPU int4/int8 layouts before and after the prefill path, on the same codes.

Perplexity windows (2048 tokens) go through the large-M path: before it existed every input
size ran torch's weight-only kernel (``prefill_rows=None``: the same code as before, unchanged);
now they are dequantized to bf16 per call and multiplied by a bf16 GEMM. One model load; each
format quantized once with RTN; both paths evaluated on the same codes with the perplexity
evaluator (WikiText-2 test, seqlen 2048): ``--windows`` windows for both paths (8 = the quick
suite), and with ``--full`` every window for the path the code takes now (the full-split "before"
numbers are in results/leaderboards/quant-smollm2-135m.md, measured with the kernel path).

    flock /work/bench.lock env PYTHONPATH=. /work/main/.venv/bin/python benchmarks/quant_prefill_ppl.py \
        --data-dir /work/shared/data --full --out results/benchmarks/quant_prefill_ppl.md
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.quant_kernel_check import perplexity, resolve_named_model
from slimbench.kernels.qlinear import CPU_PREFILL_ROWS, QuantLinear
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.run import compress

FORMATS = [("rtn w4 g128", RTNConfig(bits=4, group_size=128)), ("rtn w4 g64", RTNConfig(bits=4, group_size=64)),
           ("rtn w8 per-row", RTNConfig(bits=8, group_size=-1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--full", action="store_true", help="also every window, with the path the code takes now")
    parser.add_argument("--full-only", action="store_true", help="only every window with the path taken now (no before/after on --windows)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    source, loader, cfg, ctx = resolve_named_model(args.model)
    dense = loader.load(source, cfg, ctx)
    results = []
    for label, config in FORMATS:
        bundle = replace(dense, model=copy.deepcopy(dense.model))
        compress(RTN(config), bundle, None)
        layers = [m for m in bundle.model.modules() if isinstance(m, QuantLinear)]
        now = {m.prefill_rows for m in layers}
        row = {"format": label, "layout": layers[0].layout, "prefill_rows": sorted(r for r in now if r is not None)}
        for name, setting in () if args.full_only else (("kernel (before)", None), ("now", "default")):
            for m in layers:
                m.prefill_rows = None if setting is None else _default(m)
            start = time.perf_counter()
            row[f"{name} ppl {args.windows}w"] = perplexity(bundle, args.data_dir, args.windows, args.seqlen)
            row[f"{name} s {args.windows}w"] = time.perf_counter() - start
        if args.full or args.full_only:
            for m in layers:
                m.prefill_rows = _default(m)
            start = time.perf_counter()
            row["now ppl full"] = perplexity(bundle, args.data_dir, None, args.seqlen)
            row["now s full"] = time.perf_counter() - start
        results.append(row)
        print(row, flush=True)
        del bundle
    write(results, args)


def _default(m: QuantLinear) -> int | None:
    """The threshold the layer was built with (kernels.qlinear's table)."""
    from slimbench.kernels.qlinear import _prefill_rows

    return _prefill_rows(m.layout, m.out_features, m.qweight.device)


def write(results: list[dict], args) -> None:
    w = args.windows
    lines = [f"# Perplexity before/after the CPU prefill path ({args.model}, WikiText-2 test, seqlen {args.seqlen})", "",
             f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads; RTN codes, the same codes through both paths; "
             f"CPU_PREFILL_ROWS = {CPU_PREFILL_ROWS}. `benchmarks/quant_prefill_ppl.py`.", "",
             f"| format | layout | ppl {w} windows, kernel (before) | ppl {w} windows, now | relative change | s before / now | ppl all windows, now |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        full = f"{r['now ppl full']:.4f}" if "now ppl full" in r else "-"
        if f"now ppl {w}w" not in r:
            lines.append(f"| {r['format']} | {r['layout']} | - | - | - | - | {full} |")
            continue
        before, now = r[f"kernel (before) ppl {w}w"], r[f"now ppl {w}w"]
        lines.append(f"| {r['format']} | {r['layout']} | {before:.4f} | {now:.4f} | {(now - before) / before:+.2e} | "
                     f"{r[f'kernel (before) s {w}w']:.0f} / {r[f'now s {w}w']:.0f} | {full} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
