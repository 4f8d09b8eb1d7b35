"""Plain truncated SVD of every decoder linear (the baseline of ASVD, FWSVD and SVD-LLM).

Algorithm, for every compressible linear W [m, n] of every block:
  1. k = floor((1 − ratio) · m·n / (m+n))   (SVD-LLM's rank convention; ``ratio`` is the
     fraction of parameters removed, like SVD-LLM's ``--ratio``); skip (stay dense) unless
     k < m·n/(m+n);
  2. W = U Σ Vᵀ; keep the top-k triplets; store U_k√Σ_k [m, k] and √Σ_k V_kᵀ [k, n] as two
     linears (bias on the second).
No calibration. Embeddings and lm_head are untouched. Execution path: low-rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.lowrank.common import ratio_param, compress_uniform, details, truncated_factors
from slimbench.params import check_params


@dataclass(frozen=True)
class SVDConfig:
    ratio: float = ratio_param()

    def __post_init__(self) -> None:
        check_params(self)


@register_method("svd", config=SVDConfig, family="low-rank", produces="factored", kinds=("causal_lm", "diffusion"))
class SVD(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        keep = 1.0 - self.config.ratio
        layers, dense = compress_uniform(bundle.model, bundle.adapter, keep, lambda t, w, k: truncated_factors(w, k))
        return MethodResult(execution_path="low-rank", details=details(keep, dense, allocation="uniform"), layers=layers)
