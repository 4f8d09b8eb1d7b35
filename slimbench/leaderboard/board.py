"""The leaderboard: records -> protocol groups -> configs pooled over seeds -> cells.

1. Each record is flattened (``aggregate.row_of``) and put in its protocol group: model, dtype,
   suite and the fingerprint of its machine-independent protocols. Groups never mix.
2. Within a group every row is compared with the group's baseline run (the unchanged model):
   parameters removed, block-linear bytes against dense, and the speed ratios with their spread
   (``speed``), the latter only against a baseline timed under the same latency protocol.
3. Rows that differ only in their seeds are pooled into one config (``aggregate``): each column
   is a mean with its 95% t-interval and n.

``render`` turns a ``Board`` into Markdown, CSV, HTML and JSON; ``pareto`` draws its plots.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from slimbench.leaderboard.aggregate import ConfigRow, Stat, pool, row_of
from slimbench.leaderboard.speed import SPEEDS, Ratio, pooled, ratio
from slimbench.records import RunRecord

# (column in the flattened row, header, format)
HEADLINE_COLUMNS: list[tuple[str, str, str]] = [
    ("perplexity.perplexity", "ppl", "{:.3f}"),
    ("perplexity.perplexity.stderr", "ppl stderr (windows)", "{:.3f}"),
    ("zeroshot.mean.acc", "0-shot mean acc", "{:.4f}"),
    ("zeroshot.mean.acc.stderr", "0-shot mean acc stderr", "{:.4f}"),
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
    ("size.linear_mb", "linear MB", "{:.1f}"),
    ("vs_dense.linear_bytes", "linear bytes vs dense", "{:.1%}"),
    ("vs_dense.prefill_speedup", "prefill × dense", ""),
    ("vs_dense.decode_speedup", "decode × dense", ""),
    ("size.bits_per_weight", "bits/weight", "{:.2f}"),
    ("size.sparsity", "sparsity", "{:.3f}"),
    ("calibration", "calibration", "{}"),
    ("compression.wall_time_s", "compress s", "{:.1f}"),
    ("compression.peak_rss_mib", "compress peak RSS MiB", "{:.0f}"),
]

CACHED_MARK = "*"
CACHED_LEGEND = ("compression time and peak RSS without the calibration pass: the run read the dense "
                 "calibration statistics that an earlier run had computed from the cache.")
SPEED_LEGEND = ("× dense: speed ratio against the group's dense run timed with the same latency protocol (>1 = faster), "
                "with its spread (method at its p90/p10 against dense's median, dense at its p90/p10 against the method's "
                "median); ≈1 when the spread covers 1.0 (noise on this machine); 'not expected' where the execution path "
                "says no speedup is expected.")
POOLED_LEGEND = "mean ± 95% CI (Student t) over the n seeds of each config."
_CACHE_SENSITIVE = {"compression.wall_time_s", "compression.peak_rss_mib"}


def fmt(value, pattern: str = "{}") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def natural(text: str) -> list:
    """Sort key that orders numbers by value: drop_n=4 < drop_n=8 < drop_n=12."""
    return [(0, float(t), "") if t[:1].isdigit() else (1, 0.0, t) for t in re.findall(r"\d+(?:\.\d+)?|\D+", text)]


@dataclass
class Group:
    """One protocol group: model, dtype, suite, fingerprint and its configs."""

    model: str
    dtype: str
    suite: str
    fingerprint: str | None
    configs: list[ConfigRow] = field(default_factory=list)

    @property
    def title(self) -> str:
        head = f"{self.model}" + (f" ({self.dtype})" if self.dtype and self.dtype != "float32" else "")
        label = f"protocol {self.fingerprint}" if self.fingerprint else "no protocol (runs that failed before evaluating)"
        return f"{head} · suite {self.suite} · {label}"

    @property
    def pooled(self) -> bool:
        return any(c.n > 1 for c in self.configs)

    def columns(self) -> list[tuple[str, str, str]]:
        return [c for c in HEADLINE_COLUMNS if any(_present(cfg, c[0]) for cfg in self.configs)]


@dataclass
class Board:
    groups: list[Group]
    missing: list[str] = field(default_factory=list)  # jobs of the experiment that have no record


def _present(config: ConfigRow, column: str) -> bool:
    return any(r.get(column) is not None for r in config.runs or config.failed)


# -- building --------------------------------------------------------------------------------------
def build(records: list[RunRecord], missing: list[str] = ()) -> Board:
    groups: dict[tuple, list[dict]] = {}
    for row in map(row_of, records):
        groups.setdefault((row["model"], row["dtype"], row["suite"], row["group_fingerprint"]), []).append(row)
    board = Board([], list(missing))
    for key, members in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        add_dense_relative(members)
        configs = sorted(pool(members), key=lambda c: (not c.first.get("baseline"), c.first["method"], natural(c.first["method_config"])))
        board.groups.append(Group(*key, configs=configs))
    return board


def add_dense_relative(members: list[dict]) -> None:
    """``vs_dense.*`` columns of one protocol group's rows against the group's baseline run: the
    fraction of parameters removed, block-linear bytes as a fraction of dense's, and the speed
    ratios (``speed.Ratio``) against a baseline timed under the same latency protocol."""
    baselines = [m for m in members if m.get("baseline") and m["status"] == "ok"]
    if not baselines:
        return
    for m in members:
        removed = _fraction(m.get("size.params"), baselines[0].get("size.params"))
        m["vs_dense.params_removed"] = None if removed is None else 1.0 - removed
        m["vs_dense.linear_bytes"] = _fraction(m.get("size.linear_bytes"), baselines[0].get("size.linear_bytes"))
        same = next((b for b in baselines if b.get("fingerprint.latency") == m.get("fingerprint.latency")), None)
        for column in SPEEDS if same is not None else ():
            m[column] = ratio(m, same, column)


def _fraction(a, b) -> float | None:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
    return a / b if ok else None


# -- cells -------------------------------------------------------------------------------------------
def speed_of(config: ConfigRow, column: str) -> Ratio | None:
    return pooled([r[column] for r in latency_runs(config) if isinstance(r.get(column), Ratio)])


def latency_runs(config: ConfigRow) -> list[dict]:
    """The runs timed under the config's most common latency protocol (speeds never mix machines)."""
    if not config.runs:
        return []
    common = Counter(r.get("fingerprint.latency") for r in config.runs).most_common(1)[0][0]
    return [r for r in config.runs if r.get("fingerprint.latency") == common]


def stat_of(config: ConfigRow, column: str) -> Stat | None:
    if column.startswith("latency."):
        return ConfigRow(config.key, latency_runs(config)).stat(column)
    return config.stat(column)


def cell(config: ConfigRow, column: tuple[str, str, str]) -> str:
    key, _, pattern = column
    if key in SPEEDS:
        r = speed_of(config, key)
        return r.cell() if r is not None else "-"
    if key == "calibration":
        label = config.first.get("calibration_set", "-")
        return f"{label} seed {config.seeds}" if label != "-" and config.n <= 1 else label
    st = stat_of(config, key)
    if st is None:
        return fmt(config.value(key), pattern) if not config.runs else "-"
    # a stderr column is itself an interval; a column the seeds do not change (sizes) shows its value
    interval = bool(st.ci95) and not key.endswith(".stderr")
    text = fmt(st.mean, pattern) + (f" ± {fmt(st.ci95, pattern)}" if interval else "")
    if key in _CACHE_SENSITIVE and any(r.get("compression.calib_cached") for r in config.runs):
        text += CACHED_MARK
    return text


def status(config: ConfigRow) -> str:
    if not config.runs:
        first = config.failed[0]
        return (first.get("error") or "running") if first.get("running") else f"failed: {first.get('error') or ''}"[:60]
    running = sum(bool(r.get("running")) for r in config.failed)
    notes = [f"{n} {what}" for n, what in ((len(config.failed) - running, "failed"), (running, "running")) if n]
    return "ok" + (f" ({', '.join(notes)})" if notes else "")


def run_ids(config: ConfigRow) -> str:
    ids = [r["run_id"][:10] for r in config.runs or config.failed]
    return ids[0] + (f" +{len(ids) - 1}" if len(ids) > 1 else "")


def table(group: Group) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of one group's table (the same for Markdown and HTML)."""
    cols = group.columns()
    pooled_cols = ["n", "seeds"] if group.pooled else []
    headers = ["method", "config", "status", "path", *pooled_cols, *(c[1] for c in cols), "run_id"]
    body = []
    for c in group.configs:
        pooled_cells = [str(c.n), c.seeds] if group.pooled else []
        body.append([c.first["method"], c.first["method_config"], status(c), c.first.get("execution_path") or "-", *pooled_cells,
                     *(cell(c, col) for col in cols), run_ids(c)])
    return headers, body


def legends(group: Group) -> list[str]:
    out = []
    if group.pooled:
        out.append(POOLED_LEGEND)
    if any(k in SPEEDS for k, _, _ in group.columns()):
        out.append(SPEED_LEGEND)
    if any(r.get("compression.calib_cached") for c in group.configs for r in c.runs):
        out.append(f"{CACHED_MARK} {CACHED_LEGEND}")
    return out
