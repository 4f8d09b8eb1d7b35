"""The RunRecord: one versioned, self-describing JSON document per run attempt.

* ``run_id``: hash of what defines the experiment (model identity, method and its validated
  config, calibration fingerprint when used, evaluation config, data fingerprints, seed,
  dtype, device, threads). Re-running the same experiment gives the same run_id.
* ``protocols``: per evaluator, what it measured (dataset sha256, split, seqlen, windows, ...)
  and its own fingerprint; only latency's holds the device and thread count, so a perplexity
  measured with 1 thread and one measured with 2 share a fingerprint. ``protocol_fingerprint``
  hashes the machine-independent ones: tables never mix records whose fingerprints differ.
* ``status``: ``ok`` or ``failed`` (with the stage, error type and message).
* ``compression``: a typed ``CompressionReport`` with one ``StageReport`` per method stage,
  each with typed per-layer ``LayerReport``s, and the calibration-cache hits as a field.

``RunRecord.from_dict`` is the one reader of record files (store, leaderboard, tracker, CLI);
it upgrades records written by older schema versions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from slimbench._system import cpu_count, cpu_name, gpu_info

SCHEMA_VERSION = 2
STATUSES = ("ok", "failed")
# What a stage did to one layer (``LayerReport.change``).
CHANGES = ("pruned", "quantized", "factored", "sliced", "dropped", "smoothed", "routed", "cached")


def stable_hash(obj: Any, length: int = 16) -> str:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def new_attempt_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _build(cls, d: dict | None):
    """``cls(**d)`` keeping only the fields ``cls`` knows (records from newer versions read too)."""
    if d is None:
        return None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Metric:
    name: str
    value: float | None
    stderr: float | None = None
    higher_is_better: bool | None = None
    unit: str = ""
    evaluator: str = ""

    @property
    def key(self) -> str:
        return f"{self.evaluator}.{self.name}"


@dataclass
class LayerReport:
    """One layer a stage changed. The method fills what it knows (bits, rank, its own error
    measure); the harness fills ``params_before``/``params_after``/``sparsity`` by measuring."""

    name: str  # full dotted module name
    role: str  # linear role (q, up, q.first, ...) or the removed unit (attn, mlp, block)
    change: str  # one of CHANGES
    bits: float | None = None
    group_size: int | None = None
    rank: int | None = None
    error: float | None = None  # reconstruction error where the method computes one
    error_kind: str | None = None  # what ``error`` is (e.g. "gptq loss", "obs error")
    path: str | None = None  # this layer's execution path
    params_before: int | None = None
    params_after: int | None = None
    sparsity: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.change not in CHANGES:
            raise ValueError(f"unknown layer change {self.change!r} (known: {', '.join(CHANGES)})")


@dataclass
class StageReport:
    """What one method stage did (a single-method run has one stage)."""

    method: str
    config: dict
    execution_path: str
    wall_time_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    layers: list[LayerReport] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)  # runtime hooks it installed
    fused_with: list[str] = field(default_factory=list)  # stages run in the same engine pass (shared time/memory)

    @classmethod
    def from_dict(cls, d: dict) -> "StageReport":
        stage = _build(cls, d)
        stage.layers = [_build(LayerReport, x) for x in d.get("layers") or []]
        return stage


@dataclass
class CompressionReport:
    """The whole compression (all stages), measured from the model before and after."""

    method: str
    execution_path: str  # the composition of the stages' paths, e.g. masked-dense+int4-kernel
    speedup_expected: bool = False
    simulated: bool = False
    baseline: bool = False  # the model runs unchanged (the dense reference of its group)
    params_before: int | None = None
    params_after: int | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    linear_params_before: int | None = None
    linear_params_after: int | None = None
    bits_per_weight_before: float | None = None
    bits_per_weight_after: float | None = None
    sparsity: float | None = None  # measured: exact zeros among the block linears' weights (packed: codes at the zero point)
    wall_time_s: float | None = None
    peak_rss_bytes: int | None = None
    rss_before_bytes: int | None = None
    peak_rss_method: str = "unavailable"
    peak_gpu_bytes: int | None = None
    calibration: dict | None = None
    calibration_cache_hits: list[str] = field(default_factory=list)  # statistics read from the shared cache
    stages: list[StageReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionReport":
        report = _build(cls, d)
        report.stages = [StageReport.from_dict(x) for x in d.get("stages") or []]
        return report


@dataclass
class RunRecord:
    run_id: str
    attempt_id: str
    status: str
    model: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)  # {"name": "wanda" | "wanda+gptq", "stages": [{"name", "config", "ignored_parameters"}], ...}
    eval: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    invocation_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=utc_now)
    error: dict | None = None
    compression: CompressionReport | None = None
    metrics: list[Metric] = field(default_factory=list)
    evaluator_errors: list[dict] = field(default_factory=list)
    evaluator_peak_gpu_bytes: dict = field(default_factory=dict)  # evaluator -> torch.cuda.max_memory_allocated (None off CUDA)
    protocols: dict = field(default_factory=dict)  # evaluator -> {"fingerprint": ..., **what was measured}
    protocol_fingerprint: str | None = None  # of the machine-independent protocols (what tables group by)
    data: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # about the record itself (e.g. non-finite numbers written as null)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        """A record as written by any schema version (older ones are upgraded on read)."""
        d = upgrade(d)
        rec = _build(cls, d)
        rec.compression = CompressionReport.from_dict(d["compression"]) if d.get("compression") else None
        rec.metrics = [_build(Metric, m) for m in d.get("metrics") or []]
        return rec

    # -- reading -----------------------------------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.method.get("name", "?")

    @property
    def stages(self) -> list[dict]:
        return self.method.get("stages") or []

    def metric(self, evaluator: str, name: str) -> float | None:
        m = self.metric_entry(evaluator, name)
        return None if m is None else m.value

    def metric_entry(self, evaluator: str, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.evaluator == evaluator and m.name == name), None)

    def fingerprint(self, evaluator: str) -> str | None:
        return (self.protocols.get(evaluator) or {}).get("fingerprint")


def strict_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, and where each was
    (``metrics[0].value=nan``): strict JSON has no NaN, and a reader must not guess."""
    if isinstance(value, float):
        return (value, []) if math.isfinite(value) else (None, [f"{where}={value!r}"])
    if isinstance(value, dict):
        out, found = {}, []
        for k, v in value.items():
            out[k], f = strict_json(v, f"{where}.{k}" if where else str(k))
            found += f
        return out, found
    if isinstance(value, (list, tuple)):
        out, found = [], []
        for i, v in enumerate(value):
            item, f = strict_json(v, f"{where}[{i}]")
            out.append(item)
            found += f
        return out, found
    return value, []


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (None and non-numbers are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def protocol_fingerprint(protocol: dict) -> str:
    return stable_hash(protocol)


def evaluator_fingerprint(name: str, version: str, protocol: dict) -> str:
    """What one evaluator measured, exactly: its name, version and protocol."""
    return stable_hash({"evaluator": name, "version": version, **protocol})


# -- reading older records ---------------------------------------------------------------------
_V1_CACHE_NOTE = "calibration statistics read from the cache"
_V1_MACHINE = ("device", "threads")


def upgrade(d: dict) -> dict:
    """A schema-1 record dict as schema 2 (the file itself is never rewritten)."""
    if d.get("schema_version", 1) >= 2:
        return d
    d = dict(d)
    method = d.get("method") or {}
    stage = {"name": method.get("name"), "config": method.get("config") or {}, "ignored_parameters": method.get("ignored_parameters") or {}}
    d["method"] = {"name": method.get("name"), "stages": [stage]}
    comp = d.get("compression")
    if comp:
        comp = dict(comp)
        notes = comp.get("notes") or []
        hits = [n for n in notes if n.startswith(_V1_CACHE_NOTE)]
        comp["calibration_cache_hits"] = [k.strip() for n in hits for k in n[n.find("(") + 1:n.find(")")].split(",")] if hits else []
        comp["baseline"] = comp.get("execution_path") == "dense"
        comp["stages"] = [{"method": comp.get("method"), "config": stage["config"], "execution_path": comp.get("execution_path"),
                           "wall_time_s": comp.get("wall_time_s"), "peak_rss_bytes": comp.get("peak_rss_bytes"),
                           "details": comp.get("details") or {}, "notes": [n for n in notes if n not in hits]}]
        d["compression"] = comp
    old = d.get("protocol") or {}
    protocols = {}
    for name, proto in old.items():
        if isinstance(proto, dict):
            proto = dict(proto)
            version = proto.pop("version", "?")
            if name == "latency":
                proto.update({k: old[k] for k in _V1_MACHINE if k in old})
            protocols[name] = {"fingerprint": evaluator_fingerprint(name, version, proto), "version": version, **proto}
    d["protocols"] = protocols
    d["schema_version"] = 2
    return d


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
        "gpu": gpu_info(),  # name, capability, memory, CUDA runtime and driver versions (None without CUDA)
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
