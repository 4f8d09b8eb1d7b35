"""The local results store: the source of truth (W&B is only a sink).

Layout under ``results_dir``::

    records/<run_id>__<attempt_id>.json   one file per run attempt
    locks/<run_id>.lock                   exists (flock held) only while a run with that id executes

Writes go to a temporary file in the same directory, are fsynced, renamed into place, and the
directory is fsynced, so a reader never sees a partial record, parallel writers never collide
and a finished record survives a power loss. Records are created with the mode the umask allows
(0644 under the usual 022), so other users of a shared results dir can read them. Records are
strict JSON: a non-finite number is written as null and listed in the record's ``notes``.

Nothing is overwritten except by the same attempt: when a run starts, its attempt file holds a
``failed`` placeholder naming the stage the run has reached (``error.type == "Interrupted"``),
which the finished record replaces. A run killed outright (SIGKILL, out of memory, power loss)
therefore leaves a failed record saying where it stopped, and a failed re-run cannot erase an
earlier successful record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from slimbench.records import RunRecord, strict_json

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
        """Write (or, for the same attempt, replace) a record atomically and durably."""
        path = self.path_of(record)
        write_atomic(path, record_json(record))
        return path

    def _lock_path(self, run_id: str) -> Path:
        return self.locks_dir / f"{run_id}.lock"

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[bool]:
        """Non-blocking exclusive lock on a run_id; yields False if another process holds it.
        The lock file is removed when released (under the lock; a process that opened the
        removed file notices it is stale and takes a fresh one)."""
        import fcntl

        self.locks_dir.mkdir(parents=True, exist_ok=True)
        path = self._lock_path(run_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the file was removed by its previous holder: lock the new one
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

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
        """One record per run_id: the latest ``ok`` attempt, else the latest attempt. A run's
        placeholder whose process is still running (``running``) says so in its error
        (``running: True``, message "running: reached <stage>") instead of reading as a failure."""
        best: dict[str, RunRecord] = {}
        for rec in self.records():
            cur = best.get(rec.run_id)
            if cur is None or _rank(rec) > _rank(cur):
                best[rec.run_id] = rec
        for rec in best.values():
            if self.running(rec):
                rec.error = {**rec.error, "running": True,
                             "message": f"running: reached {rec.error.get('stage')} (pid {rec.error.get('pid')} on {rec.error.get('host')})"}
        return sorted(best.values(), key=lambda r: r.attempt_id)

    def running(self, rec: RunRecord) -> bool:
        """Whether ``rec`` is the placeholder of a run still executing: its lock file exists (a
        finished run removes it) and the process that wrote it is alive on this host. (A
        placeholder from another host stays a possible failure: its message says "or it is
        still running".) The lock itself is never probed: a probe could make a starting run of
        the same run_id believe another process holds it."""
        error = rec.error or {}
        if rec.status != "failed" or error.get("type") != "Interrupted" or error.get("host") != socket.gethostname():
            return False
        if not self._lock_path(rec.run_id).exists():
            return False
        try:
            os.kill(int(error["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        except (KeyError, TypeError, ValueError, OSError):
            return False
        return True

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
        "running": bool((rec.error or {}).get("running")),
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


def record_json(record: dict) -> str:
    """A record as strict JSON (NaN and infinities become null, listed in ``notes``)."""
    clean, found = strict_json(record)
    if found:
        clean["notes"] = [*clean.get("notes", []), "non-finite numbers written as null: " + ", ".join(found)]
    return json.dumps(clean, indent=2, sort_keys=True, default=_json_default, allow_nan=False)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # the portable way reads it by setting it (and puts it back)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path``: temp file in the same directory, fsync, chmod to 0666 & ~umask,
    rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


FALLBACK_ENV = "SLIMBENCH_FALLBACK_DIR"


def write_fallback(record: dict, exc: OSError, intended: Path) -> Path | None:
    """When the store cannot take a record (full disk, lost mount, permissions): the full record to
    stderr, and to the first directory that takes it ($SLIMBENCH_FALLBACK_DIR, the home dir, the temp
    dir, the current dir). Returns that file (None if no directory took it)."""
    text = record_json(record)
    name = intended.name
    saved = None
    for folder in [os.environ.get(FALLBACK_ENV), str(Path.home()), tempfile.gettempdir(), os.getcwd()]:
        if not folder:
            continue
        target = Path(folder) / f"slimbench-unsaved-{name}"
        try:
            with open(target, "x", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            saved = target
            break
        except OSError:
            continue
    where = f"it was saved to {str(saved)!r}" if saved else "no fallback directory could take it either"
    print(f"slimbench: error: could not write the record to {str(intended)!r} ({type(exc).__name__}: {exc}); {where}; "
          f"the full record follows on stderr (copy it to {str(intended.parent)!r} to store it)", file=sys.stderr, flush=True)
    print(text, file=sys.stderr, flush=True)
    return saved


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
