"""SVD-LLM (whitening only): truncation-aware data whitening before SVD.

Wang et al., "SVD-LLM: Truncation-aware Singular Value Decomposition for Large Language
Model Compression", ICLR 2025 (arXiv 2403.07378); reference AIoT-MLSys-Lab/SVD-LLM @ 1c1009a
(``SVDLLM.py``: ``profle_svdllm`` / ``whitening``).

Algorithm:
  1. For every decoder linear, the Gram matrix G = Σ x xᵀ of its input over all calibration
     tokens, gathered from the *original* model's activations (no compressed outputs are
     propagated; the engine's ``collect`` caches it by model + calibration set, so every
     ratio reuses one pass). The reference protocol is 256 × 2048 WikiText-2 tokens.
  2. S = Cholesky(G) in float64; if G is not positive definite, G += (−λ_min + 1e−6)·I first.
     S⁻¹ by ``inv`` (S += 1e−6·I if singular), as in the reference.
  3. k = floor((1 − ratio)·m·n/(m+n)) (``ratio`` = fraction removed, the reference's
     ``--ratio``); SVD of W·S; keep the top-k triplets;
     W′ = U_k Σ_k (V_kᵀ S⁻¹), stored as U_k√Σ_k [m, k] and √Σ_k V_kᵀ S⁻¹ [k, n].
     Layers where k would not save parameters stay dense.
The same ratio for every layer (the reference has no per-layer allocation). The reference
runs the SVD in float32; here it runs in float64 (more accurate, same algorithm).
Embeddings and lm_head are untouched. Execution path: low-rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import CalibrationEngine, LinearInputs
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.lowrank.common import ratio_param, compress_uniform, details, whitened_factors
from slimbench.params import check_params


@dataclass(frozen=True)
class SVDLLMConfig:
    ratio: float = ratio_param()

    def __post_init__(self) -> None:
        check_params(self)


@register_method("svd_llm", config=SVDLLMConfig, family="low-rank", produces="factored", calibration=True)
class SVDLLM(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        adapter, keep = bundle.adapter, 1.0 - self.config.ratio
        grams = collect_grams(bundle, calib)  # per block: role -> InputStats
        shifted: list[str] = []

        def factors(target, w, k):
            chol, chol_inv, shift = whitening(grams[target.block][target.role].gram)
            if shift:
                shifted.append(target.name)
            return whitened_factors(w, k, chol, chol_inv)

        layers, dense = compress_uniform(bundle.model, adapter, keep, factors)
        extra = {"allocation": "uniform", "gram_tokens": grams[0][next(iter(grams[0]))].tokens, "eigen_shifted": shifted}
        return MethodResult(execution_path="low-rank", details=details(keep, dense, **extra), layers=layers)


def collect_grams(bundle, calib) -> list[dict]:
    """Σ x xᵀ of every decoder linear's input, from the dense model (cached on disk)."""
    adapter = bundle.adapter
    engine = CalibrationEngine(bundle, calib)

    def observers(i, block):
        return {"inputs": LinearInputs(tuple(adapter.block_linears(block)), {"gram"})}

    stats = engine.collect(observers, cache_key="LinearInputs:gram:all-roles", desc="svd_llm gram")
    return [s["inputs"] for s in stats]


def whitening(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(S, S⁻¹, shifted): S = Cholesky(G) in float64, eigenvalue-shifted if G is not PD."""
    g = gram.double()
    shifted = False
    try:
        chol = torch.linalg.cholesky(g)
    except torch.linalg.LinAlgError:
        lam_min = torch.linalg.eigvalsh(g)[0]
        g = g + (-lam_min + 1e-6) * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        chol, shifted = torch.linalg.cholesky(g), True
    try:
        chol_inv = torch.linalg.inv(chol)
    except torch.linalg.LinAlgError:
        chol = chol + 1e-6 * torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
        chol_inv = torch.linalg.inv(chol)
    return chol, chol_inv, shifted
