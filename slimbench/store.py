"""The local results store: the source of truth (W&B is only a sink).

Layout under ``results_dir``::

    records/<run_id>__<attempt_id>.json   one file per run attempt, never overwritten
    locks/<run_id>.lock                   held (flock) while a run with that id executes

Writes go to a temporary file in the same directory, are fsynced and then renamed into
place, so a reader never sees a partial record and parallel writers never collide. Nothing
is overwritten: a failed re-run cannot erase an earlier successful record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class ResultStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.records_dir = self.root / "records"
        self.locks_dir = self.root / "locks"

    # -- writing -------------------------------------------------------------------------------
    def path_of(self, record: dict) -> Path:
        return self.records_dir / f"{record['run_id']}__{record['attempt_id']}.json"

    def write(self, record: dict) -> Path:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        path = self.path_of(record)
        payload = json.dumps(record, indent=2, sort_keys=True, default=_json_default, allow_nan=True)
        fd, tmp = tempfile.mkstemp(dir=self.records_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[bool]:
        """Non-blocking exclusive lock on a run_id; yields False if another process holds it."""
        import fcntl

        self.locks_dir.mkdir(parents=True, exist_ok=True)
        with open(self.locks_dir / f"{run_id}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------------
    def records(self, pattern: str = "*.json") -> Iterator[dict]:
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob(pattern)):
            try:
                yield json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("skipping unreadable record %s: %s", path, exc)

    def attempts(self, run_id: str) -> list[dict]:
        return list(self.records(f"{run_id}__*.json"))

    def completed(self, run_id: str) -> dict | None:
        """The latest successful attempt of ``run_id``, if any."""
        ok = [r for r in self.attempts(run_id) if r.get("status") == "ok"]
        return max(ok, key=lambda r: r["attempt_id"]) if ok else None

    def latest(self) -> list[dict]:
        """One record per run_id: the latest ``ok`` attempt, else the latest attempt."""
        best: dict[str, dict] = {}
        for rec in self.records():
            cur = best.get(rec["run_id"])
            if cur is None or _rank(rec) > _rank(cur):
                best[rec["run_id"]] = rec
        return sorted(best.values(), key=lambda r: r["attempt_id"])

    def dataframe(self, latest_only: bool = True):
        """Records flattened to a pandas DataFrame: one row per record, one column per metric."""
        import pandas as pd

        rows = [flatten_record(r) for r in (self.latest() if latest_only else self.records())]
        return pd.DataFrame(rows)


def _rank(rec: dict) -> tuple:
    return (rec.get("status") == "ok", rec.get("attempt_id", ""))


# how a record says that its method read dense calibration statistics computed by an earlier run
CALIB_CACHE_NOTE = "calibration statistics read from the cache"


def flatten_record(rec: dict) -> dict:
    method_cfg = rec.get("method", {}).get("config", {}) or {}
    row = {
        "run_id": rec["run_id"],
        "attempt_id": rec["attempt_id"],
        "status": rec.get("status"),
        "model": rec.get("model", {}).get("name"),
        "method": rec.get("method", {}).get("name"),
        "method_config": ", ".join(f"{k}={v}" for k, v in sorted(method_cfg.items())) or "-",
        "suite": rec.get("eval", {}).get("suite"),
        "protocol_fingerprint": rec.get("protocol_fingerprint"),
        "execution_path": (rec.get("compression") or {}).get("execution_path"),
        "error": (rec.get("error") or {}).get("message"),
        "created_at": rec.get("created_at"),
    }
    for m in rec.get("metrics", []):
        row[f"{m['evaluator']}.{m['name']}"] = m["value"]
    if isinstance(row.get("size.bytes"), (int, float)):
        row["size.mb"] = row["size.bytes"] / 1e6
    comp = rec.get("compression") or {}
    for key in ("wall_time_s", "sparsity", "params_after", "bytes_after"):
        if key in comp:
            row[f"compression.{key}"] = comp[key]
    cal = comp.get("calibration") or {}
    if cal:
        row["calibration"] = f"{cal.get('dataset')}/{cal.get('split')} {cal.get('nsamples')}x{cal.get('seqlen')} seed {cal.get('seed')}"
    if comp.get("peak_rss_bytes") is not None:
        row["compression.peak_rss_mib"] = comp["peak_rss_bytes"] / 2**20
    row["compression.calib_cached"] = any(n.startswith(CALIB_CACHE_NOTE) for n in comp.get("notes") or [])
    return row


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
