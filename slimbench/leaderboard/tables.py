"""Markdown/CSV tables from run records, never mixing protocol fingerprints."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

from slimbench.records import RunRecord
from slimbench.store import ResultStore, flatten_record

# (column in the flattened record, header, format)
HEADLINE_COLUMNS: list[tuple[str, str, str]] = [
    ("perplexity.perplexity", "ppl", "{:.3f}"),
    ("zeroshot.mean.acc", "0-shot mean acc", "{:.4f}"),
    ("zeroshot.piqa.acc", "PIQA", "{:.4f}"),
    ("zeroshot.arc_easy.acc", "ARC-e", "{:.4f}"),
    ("zeroshot.arc_easy.acc_norm", "ARC-e norm", "{:.4f}"),
    ("zeroshot.arc_challenge.acc", "ARC-c", "{:.4f}"),
    ("zeroshot.arc_challenge.acc_norm", "ARC-c norm", "{:.4f}"),
    ("zeroshot.boolq.acc", "BoolQ", "{:.4f}"),
    ("zeroshot.winogrande.acc", "WinoGrande", "{:.4f}"),
    ("zeroshot.openbookqa.acc", "OBQA", "{:.4f}"),
    ("zeroshot.hellaswag.acc_norm", "HellaSwag norm", "{:.4f}"),
    ("zeroshot.lambada_openai.acc", "LAMBADA", "{:.4f}"),
    ("zeroshot.lambada_openai.perplexity", "LAMBADA ppl", "{:.2f}"),
    ("latency.prefill_ms", "prefill ms", "{:.1f}"),
    ("latency.decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("latency.kv_cache_bytes_per_token", "KV B/token", "{:.0f}"),
    ("size.params", "params", "{:,.0f}"),
    ("vs_dense.params_removed", "params removed", "{:.1%}"),
    ("size.mb", "MB stored", "{:.1f}"),
    ("vs_dense.prefill_speedup", "prefill × dense", "{:.2f}"),
    ("vs_dense.decode_speedup", "decode × dense", "{:.2f}"),
    ("size.bits_per_weight", "bits/weight", "{:.2f}"),
    ("size.sparsity", "sparsity", "{:.3f}"),
    ("calibration", "calibration", "{}"),
    ("compression.wall_time_s", "compress s", "{:.1f}"),
    ("compression.peak_rss_mib", "compress peak RSS MiB", "{:.0f}"),
]


def fmt(value, pattern: str = "{}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return fmt(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 1e4):
        return f"{int(value):,}"
    return fmt(value, "{:.6g}")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def add_dense_relative(members: list[dict]) -> None:
    """Add ``vs_dense.*`` columns to each row of one protocol group, measured against that group's
    baseline run (the unchanged model: ``compression.baseline``): the fraction of parameters
    removed, and the prefill / decode speedups (>1 = faster than dense) against the baseline
    measured under the same latency protocol (device, threads) only."""
    baselines = [m for m in members if m.get("baseline") and m["status"] == "ok"]
    if not baselines:
        return

    def ratio(a, b):
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
        return a / b if ok else None

    for m in members:
        removed = ratio(m.get("size.params"), baselines[0].get("size.params"))
        m["vs_dense.params_removed"] = None if removed is None else 1.0 - removed
        same = next((b for b in baselines if b.get("fingerprint.latency") == m.get("fingerprint.latency")), None)
        if same is not None:
            m["vs_dense.prefill_speedup"] = ratio(same.get("latency.prefill_ms"), m.get("latency.prefill_ms"))
            m["vs_dense.decode_speedup"] = ratio(m.get("latency.decode_tokens_per_s"), same.get("latency.decode_tokens_per_s"))


CACHED_MARK = "*"
CACHED_LEGEND = ("compression time and peak RSS without the calibration pass: the run read the dense "
                 "calibration statistics that an earlier run had computed from the cache.")
# columns a cached calibration pass leaves out
_CACHE_SENSITIVE = {"compression.wall_time_s", "compression.peak_rss_mib"}


def _natural(text: str) -> list:
    """Sort key that orders numbers by value: drop_n=4 < drop_n=8 < drop_n=12."""
    return [(0, float(t), "") if t[:1].isdigit() else (1, 0.0, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+", text)]


def _cell(row: dict, column: tuple[str, str, str]) -> str:
    text = fmt(row.get(column[0]), column[2])
    if column[0] in _CACHE_SENSITIVE and row.get("compression.calib_cached") and text != "-":
        text += CACHED_MARK
    return text


def leaderboard_markdown(records: list[RunRecord], title_prefix: str = "") -> str:
    """One table per (model, dtype, suite, protocol fingerprint) group; one row per run."""
    rows = [flatten_record(r) for r in records]
    if not rows:
        return "(no records)"
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dtype"], row["suite"], row["protocol_fingerprint"]), []).append(row)
    out = []
    for (model, dtype, suite, fp), members in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        add_dense_relative(members)
        cols = [c for c in HEADLINE_COLUMNS if any(m.get(c[0]) is not None for m in members)]
        headers = ["method", "config", "status", "path"] + [c[1] for c in cols] + ["run_id"]
        body = []
        for m in sorted(members, key=lambda r: (not r.get("baseline"), r["method"], _natural(r["method_config"]))):
            status = m["status"] if m["status"] == "ok" else f"failed: {m.get('error') or ''}"[:60]
            body.append(
                [m["method"], m["method_config"], status, m.get("execution_path") or "-"]
                + [_cell(m, c) for c in cols]
                + [m["run_id"][:10]]
            )
        label = f"protocol {fp}" if fp else "no protocol (runs that failed before evaluating)"
        table = markdown_table(headers, body)
        if any(m.get("compression.calib_cached") for m in members):
            table += f"\n\n\\{CACHED_MARK} {CACHED_LEGEND}"
        head = f"{model}" + (f" ({dtype})" if dtype and dtype != "float32" else "")
        out.append(f"### {title_prefix}{head} · suite {suite} · {label}\n\n" + table)
    return "\n\n".join(out)


def write_csv(records: list[RunRecord], path: str | Path) -> Path:
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([flatten_record(r) for r in records]).to_csv(path, index=False)
    return path


def load_records(results_dir: str | Path, model: str | None = None, suite: str | None = None) -> list[RunRecord]:
    records = ResultStore(results_dir).latest()
    if model:
        records = [r for r in records if r.model.get("name") == model]
    if suite:
        records = [r for r in records if r.eval.get("suite") == suite]
    return records


def record_table(record: RunRecord) -> str:
    """All metrics of one record as a Markdown table."""
    rows = [[m.key, _number(m.value), fmt(m.stderr, "{:.3g}"), m.unit] for m in record.metrics]
    comp = record.compression
    if comp is not None:
        for key in ("execution_path", "sparsity", "params_after", "bytes_after", "wall_time_s"):
            rows.append([f"compression.{key}", _number(getattr(comp, key)), "", ""])
    return markdown_table(["metric", "value", "stderr", "unit"], rows)
