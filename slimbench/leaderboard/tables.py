"""Tables from run records, never mixing protocol fingerprints (the leaderboard lives in ``board``;
this module keeps the entry points the CLI and tests use)."""

from __future__ import annotations

from pathlib import Path

from slimbench.leaderboard.board import Board, build, fmt
from slimbench.leaderboard.render import markdown_table, to_markdown
from slimbench.leaderboard.render import write_csv as write_board_csv
from slimbench.records import RunRecord
from slimbench.store import ResultStore

__all__ = ["fmt", "markdown_table", "leaderboard_markdown", "write_csv", "load_records", "record_table"]


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return fmt(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 1e4):
        return f"{int(value):,}"
    return fmt(value, "{:.6g}")


def leaderboard_markdown(records: list[RunRecord], title_prefix: str = "") -> str:
    """One table per (model, dtype, suite, protocol fingerprint) group; one row per config
    (pooled over its seeds)."""
    return to_markdown(build(records), title_prefix=title_prefix)


def write_csv(records: list[RunRecord] | Board, path: str | Path) -> Path:
    return write_board_csv(records if isinstance(records, Board) else build(records), path)


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
