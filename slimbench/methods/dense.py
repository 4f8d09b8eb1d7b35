"""Dense baseline: the model as loaded, unchanged."""

from __future__ import annotations

from dataclasses import dataclass

from slimbench.methods.base import ALL_FORMS, MethodBase, MethodResult, register_method


@dataclass(frozen=True)
class DenseConfig:
    pass


@register_method("dense", config=DenseConfig, family="baseline", kinds=("causal_lm", "diffusion"), accepts=ALL_FORMS)
class Dense(MethodBase):
    def apply(self, bundle, calib) -> MethodResult:
        return MethodResult(execution_path="dense")
