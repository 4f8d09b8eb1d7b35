"""Dense baseline: the model as loaded, unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from slimbench.methods.base import METHODS, MethodResult


@dataclass(frozen=True)
class DenseConfig:
    pass


@METHODS.register("dense")
class Dense:
    name = "dense"
    Config = DenseConfig
    requires_calibration = False
    kinds = ("causal_lm", "diffusion")

    def __init__(self, config: DenseConfig) -> None:
        self.config = config

    def check(self, adapter) -> None:
        return None

    def apply(self, bundle, calib) -> MethodResult:
        return MethodResult(execution_path="dense")
