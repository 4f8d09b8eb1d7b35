"""Evaluator protocol, the Metric type and the evaluator registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from slimbench.models.bundle import ModelBundle, ModelShape
from slimbench.records import Metric  # noqa: F401  (re-exported: evaluators build Metrics)
from slimbench.registry import Registry


@dataclass
class EvalResult:
    metrics: list[Metric]
    protocol: dict = field(default_factory=dict)  # what was measured, exactly (fingerprinted)
    details: dict = field(default_factory=dict)  # anything else worth keeping in the record
    samples: dict = field(default_factory=dict)  # per-document samples when asked (EvalContext.log_samples); not in the record


@dataclass(frozen=True)
class EvalContext:
    data_dir: Path | None
    device: str
    seed: int
    threads: int
    cache_dir: Path | None = None  # where evaluators may cache derived data (e.g. converted task files)
    shape: ModelShape = field(default_factory=ModelShape)  # what the model's config says (pre-load checks)
    log_samples: bool = False  # keep per-document samples (lm-eval's log_samples): tracker.log_samples


class Evaluator(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type]
    kinds: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any) -> None: ...

    def check(self, ctx: EvalContext) -> dict:
        """Pre-load validation; returns the data fingerprints this evaluator will read."""

    def __call__(self, bundle: ModelBundle, ctx: EvalContext) -> EvalResult: ...


EVALUATORS: Registry[type] = Registry("evaluator", entry_point_group="slimbench.evaluators")


def supports(evaluator_cls: type, kind: str) -> bool:
    return kind in evaluator_cls.kinds
