"""Experiment trackers: a sink for records (the local store stays the source of truth).

``wandb`` runs offline by default: no account and no network; the run files land under the
results dir and can be uploaded later with ``wandb sync``. ``none`` disables tracking. The
harness always calls ``finish`` in a ``finally`` block, with the run's success.

What a W&B run holds (as lm-eval's W&B logger does for its results):

* the run's identity as config; every metric as a summary field, its stderr as
  ``<evaluator>/<metric>_stderr``, the compression summary under ``compression/``;
* ``results``: one row per metric (evaluator, metric, value, stderr, unit);
  ``leaderboard``: the run's row as the leaderboard tables see it (``flatten_record``);
* one per-layer table per method stage (``compression/layers/<i>-<method>``: the typed
  ``LayerReport``s of every method);
* the record JSON as an artifact (type ``run-record``); the saved model (``save_dir``) as an
  artifact of type ``model`` when ``log_model``; zero-shot samples as one table per task when
  ``log_samples`` (the evaluator keeps lm-eval's samples);
* a sweep: one more run per invocation (job type ``sweep``) with every job's leaderboard row.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from slimbench.errors import ConfigError
from slimbench.params import check_params, param
from slimbench.records import RunRecord

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def start(self, run_name: str, run_key: str, config: dict, tags: list[str], group: str | None) -> None: ...

    def log_record(self, record: RunRecord, path: Path | None = None, samples: dict | None = None) -> None: ...

    def finish(self, ok: bool) -> None: ...

    def log_sweep(self, records: list[RunRecord], group: str | None) -> None: ...


class NullTracker:
    def start(self, *args, **kwargs) -> None:
        pass

    def log_record(self, record: RunRecord, path: Path | None = None, samples: dict | None = None) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass

    def log_sweep(self, records: list[RunRecord], group: str | None) -> None:
        pass


@dataclass(frozen=True)
class WandbConfig:
    mode: str = param("offline", "offline: run files under dir (upload later with wandb sync); online; disabled",
                      choices=("offline", "online", "disabled"))
    project: str = param("slimbench", "W&B project")
    entity: str | None = param(None, "W&B entity (team or user); null = the default", nullable=True)
    dir: str = param("results/wandb", "where the run files go")
    log_model: bool = param(False, "log the saved model (save_dir) as an artifact too", choices=(True, False))
    log_samples: bool = param(False, "zero-shot: keep lm-eval's per-document samples (a table per task, and JSONL next to the record)",
                              choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)


class WandbTracker:
    def __init__(self, config: WandbConfig) -> None:
        self.config = config
        self.run = None

    def start(self, run_name, run_key, config, tags, group) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        Path(self.config.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode=self.config.mode,
            project=self.config.project,
            entity=self.config.entity,
            dir=self.config.dir,
            name=run_name,
            id=run_key,
            group=group,
            tags=tags,
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log_record(self, record: RunRecord, path: Path | None = None, samples: dict | None = None) -> None:
        if self.run is None:
            return
        import wandb

        summary = summary_fields(record)
        self.run.log({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.run.summary.update(summary)
        tables = {"results": results_table(record), "leaderboard": leaderboard_table([record])}
        tables.update(layer_tables(record))
        tables.update({f"{evaluator}/samples/{task}": sample_table(rows) for evaluator, per_task in (samples or {}).items()
                       for task, rows in per_task.items()})
        self.run.log({name: wandb.Table(columns=columns, data=rows) for name, (columns, rows) in tables.items() if rows})
        if path is not None and Path(path).is_file():
            artifact = wandb.Artifact(f"record-{record.run_id}", type="run-record", metadata={"run_id": record.run_id, "status": record.status})
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        saved = (record.artifacts.get("saved_model") or {}) if self.config.log_model else {}
        if isinstance(saved, dict) and saved.get("path") and Path(saved["path"]).is_dir():
            model = wandb.Artifact(f"model-{record.run_id}", type="model", metadata={k: v for k, v in saved.items() if k != "path"})
            model.add_dir(saved["path"])
            self.run.log_artifact(model)

    def log_sweep(self, records: list[RunRecord], group: str | None) -> None:
        """One run per sweep invocation holding every job's leaderboard row."""
        import wandb

        if not records:
            return
        Path(self.config.dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(mode=self.config.mode, project=self.config.project, entity=self.config.entity, dir=self.config.dir,
                         name=f"sweep {group or ''}".strip(), group=group, job_type="sweep", reinit="finish_previous",
                         config={"invocation_id": group, "runs": [r.run_id for r in records]},
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        try:
            columns, rows = leaderboard_table(records)
            run.log({"sweep/leaderboard": wandb.Table(columns=columns, data=rows)})
            run.summary.update({"jobs": len(records), "ok": sum(r.status == "ok" for r in records)})
        finally:
            run.finish()

    def log_leaderboard(self, name: str, table, images: dict) -> None:
        """A leaderboard (a DataFrame, one row per config) as a W&B table, and its plots as images."""
        if self.run is None:
            return
        import wandb

        frame = table.astype(object).where(table.notna(), None)
        self.run.log({f"leaderboard/{name}": wandb.Table(dataframe=frame)})
        if images:
            self.run.log({f"leaderboard/{stem}": wandb.Image(str(path)) for stem, path in images.items()})

    def finish(self, ok: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None


# -- what is logged (plain data: tested without W&B) ---------------------------------------------
def summary_fields(record: RunRecord) -> dict:
    summary: dict = {}
    for m in record.metrics:
        if m.value is not None:
            summary[f"{m.evaluator}/{m.name}"] = m.value
        if m.stderr is not None:
            summary[f"{m.evaluator}/{m.name}_stderr"] = m.stderr
    comp = record.compression
    if comp is not None:
        for key, value in vars(comp).items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                summary[f"compression/{key}"] = value
    summary.update({"status": record.status, "run_id": record.run_id, "protocol_fingerprint": record.protocol_fingerprint})
    if record.error:
        summary["error"] = f"{record.error['type']}: {record.error['message']}"
    return summary


def results_table(record: RunRecord) -> tuple[list[str], list[list]]:
    """One row per metric, as lm-eval's results table (with the evaluator's protocol fingerprint)."""
    columns = ["evaluator", "metric", "value", "stderr", "unit", "higher_is_better", "fingerprint"]
    rows = [[m.evaluator, m.name, m.value, m.stderr, m.unit, m.higher_is_better, record.fingerprint(m.evaluator)] for m in record.metrics]
    return columns, rows


def leaderboard_table(records: list[RunRecord]) -> tuple[list[str], list[list]]:
    """The records' rows as the leaderboard sees them (``flatten_record``); values W&B can show."""
    from slimbench.store import flatten_record

    flat = [flatten_record(r) for r in records]
    columns = list(dict.fromkeys(k for row in flat for k in row))
    return columns, [[_cell(row.get(c)) for c in columns] for row in flat]


def layer_tables(record: RunRecord) -> dict[str, tuple[list[str], list[list]]]:
    """One table per method stage: its typed per-layer reports."""
    import json

    columns = ["layer", "role", "change", "params_before", "params_after", "sparsity", "bits", "group_size", "rank", "error",
               "error_kind", "path", "extra"]
    tables = {}
    for i, stage in enumerate(record.compression.stages if record.compression else []):
        rows = [[x.name, x.role, x.change, x.params_before, x.params_after, x.sparsity, x.bits, x.group_size, x.rank, x.error,
                 x.error_kind, x.path, json.dumps(x.extra, default=str) if x.extra else ""] for x in stage.layers]
        tables[f"compression/layers/{i}-{stage.method}"] = (columns, rows)
    return tables


def sample_table(samples: list[dict]) -> tuple[list[str], list[list]]:
    """lm-eval samples of one task: document id, target, responses, its per-document metrics, the document."""
    import json

    fixed = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics", "doc_hash", "prompt_hash", "target_hash")
    metrics = list(dict.fromkeys(k for s in samples for k in s if k not in fixed))
    columns = ["doc_id", "target", "filtered_resps", *metrics, "doc"]
    rows = [[s.get("doc_id"), _cell(s.get("target")), _cell(s.get("filtered_resps")), *[_cell(s.get(m)) for m in metrics],
             json.dumps(s.get("doc"), default=str)] for s in samples]
    return columns, rows


def _cell(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    import json

    return json.dumps(value, default=str)


def make_tracker(tracker_cfg: dict) -> Tracker:
    from slimbench.configs import build_dataclass

    params = dict(tracker_cfg or {})
    name = params.pop("name", "none")
    if name == "none":
        return NullTracker()
    if name == "wandb":
        return WandbTracker(build_dataclass(WandbConfig, params, owner="tracker wandb"))
    raise ConfigError(f"unknown tracker {name!r} (known: wandb, none)")


# -- reading offline W&B run files (used to verify what was logged) ---------------------------
_BLOCK = 32768
_HEADER = 7  # crc32 (4) + length (2) + type (1)


def offline_records(run_file: str | os.PathLike) -> Iterator:
    """Protobuf ``Record``s of an offline ``run-<id>.wandb`` file (LevelDB log format)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file} is not a W&B run file")
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 2):  # FULL, FIRST
            pending = chunk
        elif kind in (3, 4):  # MIDDLE, LAST
            pending += chunk
        else:
            break
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
