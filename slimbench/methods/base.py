"""The Method protocol, what a method returns, and the compression report the harness writes.

A method is a class with a frozen config dataclass (validated in ``__post_init__``), a
``requires_calibration`` flag, the model kinds it supports, an optional pre-load ``check``
against the model's adapter, and ``apply(bundle, calib) -> MethodResult``. It never does
I/O, logging to trackers, or walks ``model.model.layers`` itself.

The harness, not the method, measures sizes and sparsity before and after ``apply`` and
builds the ``CompressionReport``; the method states its execution path and details.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from slimbench.data.sampler import CalibrationSet
from slimbench.models.adapters import Adapter
from slimbench.models.bundle import ModelBundle
from slimbench.registry import Registry

# How a compressed model executes, and whether that path can be faster than dense.
EXECUTION_PATHS: dict[str, str] = {
    "dense": "unchanged dense model",
    "masked-dense": "zeros stored in dense tensors: no speedup expected",
    "sliced-dense": "physically smaller dense layers (heads/neurons removed)",
    "dropped-modules": "whole attention/MLP sublayers or blocks removed",
    "low-rank": "linears replaced by two smaller factors",
    "int8-kernel": "packed int8 weights computed by an int8 kernel",
    "int4-kernel": "packed int4 weights computed by an int4 kernel",
    "cached-steps": "module outputs reused across diffusion steps",
    "dynamic-routing": "a data-dependent subset of experts/neurons computed per token",
    "simulated": "numerics emulated in floating point: no speedup, no memory saving",
}
NO_SPEEDUP_PATHS = ("dense", "masked-dense", "simulated")


@dataclass
class MethodResult:
    execution_path: str
    details: dict = field(default_factory=dict)  # per-layer decisions, scores, targets
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.execution_path not in EXECUTION_PATHS:
            raise ValueError(f"unknown execution path {self.execution_path!r} (known: {', '.join(EXECUTION_PATHS)})")


@dataclass
class CompressionReport:
    method: str
    execution_path: str
    speedup_expected: bool
    simulated: bool
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    linear_params_before: int
    linear_params_after: int
    bits_per_weight_before: float
    bits_per_weight_after: float
    sparsity: float  # measured: zeros among the plain linear weights after compression
    wall_time_s: float
    peak_rss_bytes: int | None  # process peak during apply()
    rss_before_bytes: int | None  # resident before apply(): the growth is the difference
    peak_rss_method: str
    calibration: dict | None
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Method(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]
    requires_calibration: ClassVar[bool]
    kinds: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any) -> None: ...

    def check(self, adapter: Adapter) -> None:
        """Pre-load structural check (e.g. required linear roles); raise ConfigError."""

    def apply(self, bundle: ModelBundle, calib: CalibrationSet | None) -> MethodResult: ...


METHODS: Registry[type] = Registry("method", entry_point_group="slimbench.methods")


def supports(method_cls: type, kind: str) -> bool:
    return kind in method_cls.kinds
