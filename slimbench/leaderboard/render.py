"""A ``Board`` as Markdown, CSV, HTML and JSON (the same groups, configs and numbers in each).

Markdown and HTML show the cells of ``board.table`` (means ± 95% CI where a config pooled seeds);
CSV has one row per config with every numeric column as ``<col>`` (mean), ``<col>.ci95`` and
``<col>.n``; JSON holds the same per group with each run's id and values.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from slimbench.leaderboard.aggregate import ConfigRow, _finite
from slimbench.leaderboard.board import Board, Group, legends, speed_of, stat_of, status, table
from slimbench.leaderboard.speed import SPEEDS

IDENTITY = ("model", "dtype", "suite", "method", "method_config", "calibration_set", "execution_path", "speedup_expected", "baseline")


def markdown_table(headers, rows) -> str:
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def missing_note(board: Board) -> str:
    if not board.missing:
        return ""
    jobs = "\n".join(f"- `{m}`" for m in board.missing)
    return f"### not run yet: {len(board.missing)} job(s) of the experiment have no record\n\n{jobs}"


def to_markdown(board: Board, images: dict[str, str] | None = None, title_prefix: str = "") -> str:
    if not board.groups:
        return "\n\n".join(x for x in ("(no records)", missing_note(board)) if x)
    out = []
    for group in board.groups:
        text = f"### {title_prefix}{group.title}\n\n" + markdown_table(*table(group))
        text += "".join(f"\n\n{legend}" if not legend.startswith("*") else f"\n\n\\{legend}" for legend in legends(group))
        out.append(text)
    for caption, path in (images or {}).items():
        out.append(f"![{caption}]({path})")
    return "\n\n".join(out + ([missing_note(board)] if board.missing else []))


def numeric_columns(config: ConfigRow) -> list[str]:
    keys = dict.fromkeys(k for r in config.runs for k, v in r.items() if _finite(v) and k not in IDENTITY)
    return [k for k in keys if k not in ("seed", "calib_seed")]


def config_record(group: Group, config: ConfigRow) -> dict:
    """One config as a flat dict of plain values (CSV row / JSON row)."""
    first = config.first
    out = {k: first.get(k) for k in IDENTITY}
    out.update(protocol=group.fingerprint, status=status(config), n=config.n, seeds=config.seeds,
               run_ids=";".join(r["run_id"] for r in config.runs or config.failed))
    for key in numeric_columns(config):
        st = stat_of(config, key)
        if st is not None:
            out[key], out[f"{key}.ci95"], out[f"{key}.n"] = st.mean, st.ci95, st.n
    for key in SPEEDS:
        r = speed_of(config, key)
        if r is not None:
            out.update({key: r.value, f"{key}.low": r.low, f"{key}.high": r.high, f"{key}.verdict": r.verdict})
    return out


def to_frame(board: Board):
    import pandas as pd

    return pd.DataFrame([config_record(g, c) for g in board.groups for c in g.configs])


def write_csv(board: Board, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_frame(board).to_csv(path, index=False)
    return path


def to_json(board: Board) -> str:
    groups = []
    for g in board.groups:
        configs = []
        for c in g.configs:
            row = config_record(g, c)
            row["runs"] = [{"run_id": r["run_id"], "seed": r["seed"], "calib_seed": r["calib_seed"], "status": r["status"]}
                           for r in c.runs + c.failed]
            configs.append(row)
        groups.append({"model": g.model, "dtype": g.dtype, "suite": g.suite, "protocol": g.fingerprint, "configs": configs})
    return json.dumps({"schema": "slimbench.leaderboard/1", "groups": groups, "missing": board.missing}, indent=2,
                      default=_plain, allow_nan=False)


def _plain(value):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def to_html(board: Board, images: dict[str, str] | None = None, title: str = "slimbench leaderboard") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px;margin-bottom:.6em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+4),th{text-align:left}"
             "th{background:#f3f3f3}p.legend{font-size:12px;color:#444;max-width:70em}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for group in board.groups:
        headers, rows = table(group)
        parts.append(f"<h2>{html.escape(group.title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>" + "".join(f"<p class='legend'>{html.escape(x)}</p>" for x in legends(group)))
    for caption, path in (images or {}).items():
        parts.append(f"<figure><img src='{html.escape(path)}' alt='{html.escape(caption)}' style='max-width:100%'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if board.missing:
        parts.append("<h2>not run yet</h2><ul>" + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in board.missing) + "</ul>")
    return "\n".join(parts + ["</body></html>"])
