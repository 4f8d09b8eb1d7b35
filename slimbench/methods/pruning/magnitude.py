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

from slimbench.methods.base import LayerReport, MethodBase, MethodResult, register_method
from slimbench.methods.pruning.masks import PATTERN_DOC, check_sparsity, parse_pattern, pattern_mask
from slimbench.params import check_params, param


@dataclass(frozen=True)
class MagnitudeConfig:
    sparsity: float = param(0.5, "fraction of weights removed per matrix", ge=0, lt=1)
    pattern: str = param("unstructured", PATTERN_DOC)

    def __post_init__(self) -> None:
        check_params(self)
        check_sparsity(self.sparsity, self.pattern)


@register_method("magnitude", config=MagnitudeConfig, family="pruning", produces="masked", kinds=("causal_lm", "diffusion"))
class Magnitude(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter = self.config, bundle.adapter
        layers = []
        for i, block in enumerate(adapter.get_blocks(bundle.model)):
            for role, module in adapter.block_linears(block).items():
                weight = adapter.weight_matrix(module)  # [out, in]
                weight.masked_fill_(pattern_mask(weight.abs(), cfg.sparsity, cfg.pattern, per_row=False), 0.0)
                layers.append(LayerReport(adapter.layer_name(i, role), role, "pruned"))
        nm = parse_pattern(cfg.pattern)
        return MethodResult(
            execution_path="masked-dense",
            details={"pattern": cfg.pattern},
            notes=[f"{nm[0]}:{nm[1]} pattern stored dense: no sparse kernel is used" if nm else "unstructured zeros stored dense"],
            layers=layers,
        )
