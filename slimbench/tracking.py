"""Experiment trackers: a sink for records (the local store stays the source of truth).

``wandb`` runs offline by default: no account and no network; the run files land under the
results dir and can be uploaded later with ``wandb sync``. ``none`` disables tracking. The
harness always calls ``finish`` in a ``finally`` block, with the run's success.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from slimbench.errors import ConfigError
from slimbench.records import RunRecord

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def start(self, run_name: str, run_key: str, config: dict, tags: list[str], group: str | None) -> None: ...

    def log_record(self, record: RunRecord) -> None: ...

    def finish(self, ok: bool) -> None: ...


class NullTracker:
    def start(self, *args, **kwargs) -> None:
        pass

    def log_record(self, record: RunRecord) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "slimbench"
    entity: str | None = None
    dir: str = "results/wandb"

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"tracker.mode must be offline, online or disabled, got {self.mode!r}")


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

    def log_record(self, record: RunRecord) -> None:
        if self.run is None:
            return
        import wandb

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
        self.run.log({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.run.summary.update(summary)
        layers = [(s.method, layer) for s in (comp.stages if comp else []) for layer in s.layers]
        if layers:
            columns = ["stage", "layer", "role", "change", "params_before", "params_after", "sparsity", "bits", "rank", "error"]
            rows = [[stage, x.name, x.role, x.change, x.params_before, x.params_after, x.sparsity, x.bits, x.rank, x.error] for stage, x in layers]
            self.run.log({"compression/layers": wandb.Table(columns=columns, data=rows)})

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
