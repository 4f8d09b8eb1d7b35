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

from slimbench.records import RunRecord

log = logging.getLogger(__name__)


class ResultStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.records_dir = self.root / "records"
        self.locks_dir = self.root / "locks"

    # -- writing -------------------------------------------------------------------------------
    def path_of(self, record: RunRecord | dict) -> Path:
        run_id, attempt = (record["run_id"], record["attempt_id"]) if isinstance(record, dict) else (record.run_id, record.attempt_id)
        return self.records_dir / f"{run_id}__{attempt}.json"

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
    def records(self, pattern: str = "*.json") -> Iterator[RunRecord]:
        """Every readable record (typed; older schema versions upgraded on read)."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob(pattern)):
            try:
                yield RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("skipping unreadable record %s: %s", path, exc)

    def attempts(self, run_id: str) -> list[RunRecord]:
        return list(self.records(f"{run_id}__*.json"))

    def completed(self, run_id: str) -> RunRecord | None:
        """The latest successful attempt of ``run_id``, if any."""
        ok = [r for r in self.attempts(run_id) if r.status == "ok"]
        return max(ok, key=lambda r: r.attempt_id) if ok else None

    def latest(self) -> list[RunRecord]:
        """One record per run_id: the latest ``ok`` attempt, else the latest attempt."""
        best: dict[str, RunRecord] = {}
        for rec in self.records():
            cur = best.get(rec.run_id)
            if cur is None or _rank(rec) > _rank(cur):
                best[rec.run_id] = rec
        return sorted(best.values(), key=lambda r: r.attempt_id)

    def dataframe(self, latest_only: bool = True):
        """Records flattened to a pandas DataFrame: one row per record, one column per metric."""
        import pandas as pd

        rows = [flatten_record(r) for r in (self.latest() if latest_only else self.records())]
        return pd.DataFrame(rows)


def _rank(rec: RunRecord) -> tuple:
    return (rec.status == "ok", rec.attempt_id)


def method_label(rec: RunRecord) -> str:
    """The method parameters as one readable cell: ``k=v, ...`` (pipelines: ``a(k=v) + b(k=v)``)."""
    def params(config: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))

    stages = rec.stages
    if len(stages) == 1:
        return params(stages[0].get("config") or {}) or "-"
    return " + ".join(f"{s['name']}({params(s.get('config') or {})})" for s in stages) or "-"


def flatten_record(rec: RunRecord) -> dict:
    """One flat row: identity, one column per metric (and its stderr), per method parameter,
    per evaluator fingerprint and protocol field (``protocol.<evaluator>.<field>``), and the
    compression summary."""
    row = {
        "run_id": rec.run_id,
        "attempt_id": rec.attempt_id,
        "status": rec.status,
        "model": rec.model.get("name"),
        "dtype": rec.model.get("dtype"),
        "method": rec.method_name,
        "method_config": method_label(rec),
        "suite": rec.eval.get("suite"),
        "protocol_fingerprint": rec.protocol_fingerprint,
        "error": (rec.error or {}).get("message"),
        "created_at": rec.created_at,
    }
    stages = rec.stages
    for i, stage in enumerate(stages):
        prefix = "param." if len(stages) == 1 else f"param.{i}."
        for key, value in (stage.get("config") or {}).items():
            row[prefix + key] = value
    for name, proto in rec.protocols.items():
        row[f"fingerprint.{name}"] = proto.get("fingerprint")
        for key, value in proto.items():  # what each evaluator measured: seqlen, windows, limit, threads, ...
            if key != "fingerprint" and (value is None or isinstance(value, (bool, int, float, str))):
                row[f"protocol.{name}.{key}"] = value
    for m in rec.metrics:
        row[m.key] = m.value
        if m.stderr is not None:
            row[f"{m.key}.stderr"] = m.stderr
    if isinstance(row.get("size.bytes"), (int, float)):
        row["size.mb"] = row["size.bytes"] / 1e6
    comp = rec.compression
    if comp is not None:
        row.update({"execution_path": comp.execution_path, "baseline": comp.baseline, "speedup_expected": comp.speedup_expected,
                    "compression.wall_time_s": comp.wall_time_s, "compression.sparsity": comp.sparsity,
                    "compression.params_after": comp.params_after, "compression.bytes_after": comp.bytes_after,
                    "compression.calib_cached": bool(comp.calibration_cache_hits)})
        if comp.peak_rss_bytes is not None:
            row["compression.peak_rss_mib"] = comp.peak_rss_bytes / 2**20
        cal = comp.calibration or {}
        if cal:
            draw = f"{cal.get('nsamples')}x{cal.get('seqlen')}" if "seqlen" in cal else f"{cal.get('nsamples')} images x {cal.get('steps')} steps"
            row["calibration"] = f"{cal.get('dataset')}/{cal.get('split', '-')} {draw} seed {cal.get('seed')}"
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
