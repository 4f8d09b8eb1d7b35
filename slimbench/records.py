"""The RunRecord: one versioned, self-describing JSON document per run attempt.

* ``run_id``: hash of what defines the experiment (model identity, method and its validated
  config, calibration fingerprint when used, evaluation config, data fingerprints, seed,
  dtype, device, threads). Re-running the same experiment gives the same run_id.
* ``protocol_fingerprint``: hash of what was measured (each evaluator's name, version and
  protocol: dataset sha256, split, seqlen, windows, ...). Records are only compared within
  one fingerprint.
* ``status``: ``ok`` or ``failed`` (with the stage, error type and message).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from slimbench._system import cpu_count, cpu_name

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")


def stable_hash(obj: Any, length: int = 16) -> str:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def new_attempt_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    run_id: str
    attempt_id: str
    status: str
    model: dict
    method: dict
    eval: dict
    config: dict
    environment: dict
    invocation_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=utc_now)
    error: dict | None = None
    compression: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    evaluator_errors: list[dict] = field(default_factory=list)
    protocol: dict = field(default_factory=dict)
    protocol_fingerprint: str | None = None
    data: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def metric(self, evaluator: str, name: str) -> float | None:
        for m in self.metrics:
            if m["evaluator"] == evaluator and m["name"] == name:
                return m["value"]
        return None


def protocol_fingerprint(protocol: dict) -> str:
    return stable_hash(protocol)


_PACKAGES = ("slimbench", "torch", "transformers", "lm_eval", "wandb", "hydra-core", "omegaconf", "pandas", "numpy", "triton")


@lru_cache(maxsize=1)
def _static_environment() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": git_state(),
    }
    return env


def environment() -> dict:
    return {**_static_environment(), "torch_threads": torch.get_num_threads()}


def git_state() -> dict:
    """Commit and dirty flag of the slimbench source tree (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return {"sha": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
