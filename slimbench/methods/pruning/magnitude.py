"""Magnitude pruning (the classic baseline; Han et al. 2015, as used by SparseGPT/Wanda).

Algorithm, for every compressible linear of every block:
  1. score = |W|
  2. unstructured: zero the ``sparsity`` fraction of lowest scores of the whole matrix;
     N:M: in every group of M consecutive inputs of each output row, zero the N lowest.
No calibration, no weight update. Execution path: masked-dense (no speedup expected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.methods.base import METHODS, MethodResult
from slimbench.methods.pruning.masks import check_sparsity, parse_pattern, pattern_mask


@dataclass(frozen=True)
class MagnitudeConfig:
    sparsity: float = 0.5  # fraction of weights removed per matrix
    pattern: str = "unstructured"  # or "N:M", e.g. "2:4" (then sparsity must equal N/M)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity, self.pattern)


@METHODS.register("magnitude")
class Magnitude:
    name = "magnitude"
    Config = MagnitudeConfig
    requires_calibration = False
    kinds = ("causal_lm", "diffusion")

    def __init__(self, config: MagnitudeConfig) -> None:
        self.config = config

    def check(self, adapter) -> None:
        return None

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter = self.config, bundle.adapter
        per_layer = {}
        for name, module in adapter.linear_paths(bundle.model).items():
            weight = adapter.weight_matrix(module)  # [out, in]
            mask = pattern_mask(weight.abs(), cfg.sparsity, cfg.pattern, per_row=False)
            weight.masked_fill_(mask, 0.0)
            per_layer[name] = round(mask.float().mean().item(), 6)
        nm = parse_pattern(cfg.pattern)
        return MethodResult(
            execution_path="masked-dense",
            details={"pattern": cfg.pattern, "per_layer_sparsity": per_layer},
            notes=[f"{nm[0]}:{nm[1]} pattern stored dense: no sparse kernel is used" if nm else "unstructured zeros stored dense"],
        )
