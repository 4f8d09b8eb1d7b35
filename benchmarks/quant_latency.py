"""Prefill and decode latency of every quantized format on SmolLM2, side by side with dense fp32.

Latency depends on the format (layout, bits, group), not on which method chose the codes, so
each format is measured with RTN codes (SmoothQuant's W8A8 with per-channel absmax weights:
its smoothing only rescales weights and norms): one model load, each format quantized from the
same dense weights, every measurement in this one process with the latency evaluator of the
``ppl`` suite (prompt 128 tokens, 64 greedy decode tokens with KV cache), the variants interleaved:
each round measures every variant once (2 warm-up rounds, then 7; median), so that the machine's
load changing during the run hits all of them alike. Formats with a CPU kernel are measured twice, decode (1 row) always by torch's kernel:
with the prefill (128 rows) also by the kernel (``prefill_rows=None``: the behaviour before the
prefill path existed) and with the prefill dequantized to bf16 + bf16 GEMM (``prefill_rows=2``).
Which of the two the code runs at 128 rows follows from ``CPU_PREFILL_ROWS``, printed under the
table. The model-level crossover that sets it is measured here too: for each such format, the
prefill time of the whole model (median of ``--crossover-repeats``) at prompts of
``CROSSOVER_ROWS`` tokens through the kernel and through the dequantizing path; the crossover
is the smallest prompt from which the dequantizing path is faster at every longer one
(``cpu_quant_crossover.py`` gives the same per layer, with warm caches).

    flock /work/bench.lock env PYTHONPATH=. /work/main/.venv/bin/python benchmarks/quant_latency.py \
        --out results/benchmarks/quant_latency_smollm2.md
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.quant_kernel_check import resolve_named_model
from slimbench._system import cpu_name
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.latency import Latency, LatencyConfig, percentile
from slimbench.kernels.qlinear import CPU_PREFILL_ROWS, QuantLinear
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.models.adapters import set_path
from slimbench.run import compress

# (label, RTN config or "w8a8", leaderboard rows it stands for)
FORMATS = [
    ("int4 g128", RTNConfig(bits=4, group_size=128), "awq w4, gptq w4 g128 (both orders), rtn w4 g128"),
    ("int4 g64", RTNConfig(bits=4, group_size=64), "gptq w4 g64, rtn w4 g64"),
    ("int8 per-row", RTNConfig(bits=8, group_size=-1), "awq w8, gptq w8, rtn w8"),
    ("int3 g128 (simulated)", RTNConfig(bits=3, group_size=128), "awq w3, gptq w3 (both orders), rtn w3"),
    ("w8a8 per-channel/per-token", "w8a8", "smoothquant (smooth on/off)"),
]


def to_w8a8(bundle) -> None:
    adapter = bundle.adapter
    for block in adapter.get_blocks(bundle.model):
        for role, module in adapter.block_linears(block).items():
            bias = getattr(module, "bias", None)
            set_path(block, adapter.role_path(role), QuantLinear.w8a8_from_float(adapter.weight_matrix(module).detach().float(), bias))


CROSSOVER_ROWS = [8, 16, 32, 64, 96, 128, 192, 256, 512]


@torch.inference_mode()
def prefill_crossover(bundle, layers, repeats: int) -> tuple[dict, int | None]:
    """{rows: (kernel ms, dequantizing ms)} of a whole-model prefill, and the crossover."""
    vocab = bundle.model.get_input_embeddings().weight.shape[0]
    times = {}
    for rows in CROSSOVER_ROWS:
        prompt = torch.randint(0, vocab, (1, rows), generator=torch.Generator().manual_seed(rows))
        samples = {None: [], 2: []}
        for _ in range(repeats + 1):  # the first round is a warm-up
            for prefill_rows in samples:
                for m in layers:
                    m.prefill_rows = prefill_rows
                start = time.perf_counter()
                bundle.model(input_ids=prompt, use_cache=True)
                samples[prefill_rows].append(time.perf_counter() - start)
        times[rows] = tuple(1e3 * sorted(v[1:])[len(v[1:]) // 2] for v in samples.values())
    best = None
    for rows in sorted(times, reverse=True):
        if times[rows][1] >= times[rows][0]:
            break
        best = rows
    return times, best


def measure_once(bundle, config: LatencyConfig) -> dict:
    """One latency measurement (the evaluator with warmup 0, repeats 1): prefill ms and decode tokens/s."""
    ctx = EvalContext(data_dir=None, device="cpu", seed=0, threads=torch.get_num_threads())
    result = Latency(replace(config, warmup=0, repeats=1))(bundle, ctx)
    return {m.name: m.value for m in result.metrics}


def interleaved(variants: list[tuple], config: LatencyConfig) -> list[dict]:
    """Every variant measured once per round, the variants interleaved within each round
    (``config.warmup`` rounds discarded, then ``config.repeats``), so that a change of the machine's
    load during the run hits every variant alike; per variant the median and p90 of prefill ms and
    the median and p10 of decode tokens/s over the rounds."""
    samples = [[] for _ in variants]
    for round_ in range(config.warmup + config.repeats):
        for i, (_, _, _, bundle, prefill_rows) in enumerate(variants):
            set_prefill_rows(bundle, prefill_rows)
            m = measure_once(bundle, config)
            if round_ >= config.warmup:
                samples[i].append((m["prefill_ms"], m["decode_tokens_per_s"]))
        print(f"round {round_ + 1}/{config.warmup + config.repeats} done", flush=True)
    out = []
    for runs in samples:
        prefill, tok_s = [r[0] for r in runs], [r[1] for r in runs]
        out.append({"prefill_ms": percentile(prefill, 50), "prefill_ms_p90": percentile(prefill, 90),
                    "decode_tokens_per_s": percentile(tok_s, 50), "decode_tokens_per_s_p10": percentile(tok_s, 10)})
    return out


def set_prefill_rows(bundle, prefill_rows) -> None:
    """The row threshold of every quantized layer (``"code"``: leave what the code configured)."""
    if prefill_rows == "code":
        return
    for m in bundle.model.modules():
        if isinstance(m, QuantLinear):
            m.prefill_rows = prefill_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128, help="prefill tokens (the leaderboard's columns are at 128)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--formats", default="all", help="comma-separated labels' first words (e.g. int4,int8) or all")
    parser.add_argument("--crossover-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--leaderboard", type=Path, help="rewrite this quant table's latency columns with the rows measured here")
    parser.add_argument("--from-json", type=Path, help="measure nothing: rebuild the table (and --leaderboard) from this run's JSON "
                        "with the current CPU_PREFILL_ROWS choosing each format's path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.leaderboard and args.prompt_len != 128:
        parser.error("--leaderboard rewrites the 128-token columns: use it with --prompt-len 128")
    config = LatencyConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch_size=1, warmup=args.warmup, repeats=args.repeats)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        rows = [(r["format"], r["stands_for"], r["path"], r) for r in saved["rows"]]
        crossovers = {k: (v["layout"], {int(r): tuple(t) for r, t in v["ms"].items()}, v["rows"]) for k, v in saved["crossover"].items()}
        layouts = saved.get("layouts") or {k: v[0] for k, v in crossovers.items()}
        write(rows, crossovers, layouts, config, args, measured_on=saved.get("measured_on"))
        if args.leaderboard:
            update_leaderboard(args.leaderboard, rows, layouts, args, measured_on=saved.get("measured_on"))
        return
    source, loader, cfg, ctx = resolve_named_model(args.model)
    dense = loader.load(source, cfg, ctx)
    variants = [("dense fp32", "-", "dense", dense, "code")]  # (label, stands for, path, bundle, prefill_rows)
    crossovers, layouts = {}, {}
    for label, fmt, stands_for in FORMATS:
        if args.formats != "all" and label.split()[0] not in args.formats.split(","):
            continue
        bundle = replace(dense, model=copy.deepcopy(dense.model))
        if fmt == "w8a8":
            to_w8a8(bundle)
        else:
            compress(RTN(fmt), bundle, None)
        layers = [m for m in bundle.model.modules() if isinstance(m, QuantLinear)]
        configured = sorted({m.prefill_rows for m in layers if m.prefill_rows is not None})
        if not configured:
            variants.append((label, stands_for, layers[0].execution_path, bundle, "code"))
            continue
        layouts[label] = layers[0].layout
        if args.crossover_repeats:
            crossovers[label] = (layers[0].layout, *prefill_crossover(bundle, layers, args.crossover_repeats))
            print(label, crossovers[label], flush=True)
        variants += [(label, stands_for, "kernel for every size (before)", bundle, None),
                     (label, stands_for, "prefill by dequantize + bf16 GEMM", bundle, 2)]
    rows = [(v[0], v[1], v[2], m) for v, m in zip(variants, interleaved(variants, config))]
    write(rows, crossovers, layouts, config, args)
    if args.leaderboard:
        update_leaderboard(args.leaderboard, rows, layouts, args)


LATENCY_COLUMNS = ("prefill ms", "decode tok/s", "prefill × dense", "decode × dense")
DEQUANTIZES = {"kernel for every size (before)": False, "prefill by dequantize + bf16 GEMM": True}  # the two measured paths


def taken_now(label: str, path: str, layouts: dict, prompt_len: int) -> bool:
    """Whether the code takes this measured path at ``prompt_len`` rows (formats measured one way: always)."""
    if path not in DEQUANTIZES:
        return True
    threshold = CPU_PREFILL_ROWS.get(layouts[label])
    return DEQUANTIZES[path] == (threshold is not None and threshold <= prompt_len)


def leaderboard_format(method: str, config: str) -> str | None:
    """The measured format a quant table row stands for (None: no single format, e.g. mixed precision)."""
    params = dict(kv.split("=", 1) for kv in config.split(", ") if "=" in kv)
    if method == "dense":
        return "dense fp32"
    if method == "smoothquant":
        return "w8a8 per-channel/per-token"
    if method not in ("rtn", "gptq", "awq"):
        return None
    return {("4", "128"): "int4 g128", ("4", "64"): "int4 g64", ("8", "-1"): "int8 per-row",
            ("3", "128"): "int3 g128 (simulated)"}.get((params.get("bits"), params.get("group_size")))


NOTE_START = "Latency columns (prefill ms, decode tok/s, × dense) re-measured"


def update_leaderboard(path: Path, rows, layouts, args, measured_on: str | None = None) -> None:
    """Replace the latency columns of every row of the table whose format was measured here (the
    path the code takes now at the 128-token prompt, by ``CPU_PREFILL_ROWS``), and add a note
    saying where the numbers come from (replacing an earlier one); other rows keep their record's
    numbers (marked †)."""
    measured = {label: m for label, _, taken, m in rows if taken_now(label, taken, layouts, 128)}
    base = measured["dense fp32"]
    lines = [line for line in path.read_text().splitlines() if not line.startswith(NOTE_START)]
    while lines and not lines[-1].strip():
        lines.pop()
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    idx = {c: cols.index(c) for c in ("method", "config", *LATENCY_COLUMNS)}
    kept = []
    for i in range(header + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        cells = [c.strip() for c in lines[i].strip("|").split("|")]
        fmt = leaderboard_format(cells[idx["method"]], cells[idx["config"]])
        if fmt not in measured:
            kept.append(cells[idx["method"]])
            cells[idx["prefill ms"]] = cells[idx["prefill ms"]].rstrip("†") + "†"
        else:
            m = measured[fmt]
            cells[idx["prefill ms"]] = f"{m['prefill_ms']:.1f}"
            cells[idx["decode tok/s"]] = f"{m['decode_tokens_per_s']:.1f}"
            cells[idx["prefill × dense"]] = f"{base['prefill_ms'] / m['prefill_ms']:.2f}"
            cells[idx["decode × dense"]] = f"{m['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}"
        lines[i] = "| " + " | ".join(cells) + " |"
    lines += ["", f"{NOTE_START} {measured_on or time.strftime('%Y-%m-%d')} with the prefill path "
              f"(CPU_PREFILL_ROWS = {CPU_PREFILL_ROWS}) by `benchmarks/quant_latency.py` "
              f"(`{args.out or 'results/benchmarks/quant_latency_smollm2.md'}`): one process, each format measured once with RTN codes "
              "(latency depends on the format, not on the method that chose the codes), the formats interleaved; prompt 128 tokens, "
              f"{args.new_tokens} decode tokens, median of {args.repeats} rounds after {args.warmup} warm-up. Every other column "
              "is the row's record."
              + (f" † not re-measured (no single format: {', '.join(sorted(set(kept)))}): the record's number." if kept else "")]
    path.write_text("\n".join(lines) + "\n")


def write(rows, crossovers, layouts, config: LatencyConfig, args, measured_on: str | None = None) -> None:
    base = rows[0][3]
    measured_on = measured_on or time.strftime('%Y-%m-%d')
    lines = [f"# Quantized formats on {args.model}: prefill and decode latency (CPU)", "",
             f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}, "
             f"{measured_on}. One process, one model load; each format quantized with RTN codes from the same "
             f"dense weights; latency evaluator: prompt {config.prompt_len} tokens, {config.new_tokens} decode tokens (KV cache); "
             f"the rows interleaved, one measurement of each per round: {config.warmup} warm-up rounds, median of {config.repeats}. "
             f"`benchmarks/quant_latency.py`.", "",
             "| format | stands for (leaderboard rows) | path | prefill ms | prefill p90 | decode tok/s | decode p10 | prefill × dense | decode × dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, stands_for, path, m in rows:
        lines.append(f"| {label} | {stands_for} | {path} | {m['prefill_ms']:.1f} | {m['prefill_ms_p90']:.1f} | {m['decode_tokens_per_s']:.1f} | "
                     f"{m['decode_tokens_per_s_p10']:.1f} | {base['prefill_ms'] / m['prefill_ms']:.2f} | {m['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f} |")
    if crossovers:
        lines += ["", "Whole-model prefill (ms, median) by prompt length: kernel / dequantize + bf16 GEMM; crossover = smallest prompt "
                  "from which the dequantizing path is faster at every longer one.", "",
                  "| format | layout | " + " | ".join(f"{r} tok" for r in CROSSOVER_ROWS) + " | crossover |",
                  "|---|---|" + "---|" * len(CROSSOVER_ROWS) + "---|"]
        for label, (layout, times, best) in crossovers.items():
            lines.append(f"| {label} | {layout} | " + " | ".join(f"{k:.0f} / {d:.0f}" for k, d in times.values()) + f" | {best} |")
    taken = [f"{label}: {'dequantize' if DEQUANTIZES[path] else 'kernel'}" for label, _, path, _ in rows
             if path in DEQUANTIZES and taken_now(label, path, layouts, config.prompt_len)]
    lines += ["", f"Decode (1 row) always runs torch's kernel. The code dequantizes from CPU_PREFILL_ROWS = {CPU_PREFILL_ROWS} rows on "
              f"({'the whole-model crossovers above' if crossovers else 'the whole-model crossovers of results/benchmarks/quant_latency_smollm2.md'}); at a {config.prompt_len}-token prefill it takes: {'; '.join(taken)}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"measured_on": measured_on, "layouts": layouts, "rows": [{"format": r[0], "stands_for": r[1], "path": r[2], **r[3]} for r in rows],
                                                             "crossover": {k: {"layout": v[0], "ms": {str(r): t for r, t in v[1].items()}, "rows": v[2]}
                                                                           for k, v in crossovers.items()}}, indent=1))


if __name__ == "__main__":
    main()
