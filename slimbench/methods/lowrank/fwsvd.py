"""FWSVD: Fisher-weighted SVD.

Hsu et al., "Language Model Compression with Weighted Low-Rank Factorization", ICLR 2022
(arXiv 2207.00112).

Algorithm:
  1. Fisher information of every decoder-linear weight, estimated empirically:
     I_W = (1/N) Σ_d (∂L_d/∂W)² over the N calibration windows d, L_d the mean next-token
     cross-entropy of window d (one window per backward pass, to keep memory at one sample).
  2. Row importance Î_j = Σ_i I_W[i, j]: the paper sums I_W along each row of W in its
     x·W layout (W ∈ R^{in×out}), i.e. one weight per *input* feature of torch's [out, in]
     weight (ASVD4LLM's ``calib_fisher_info`` aggregates the same axis, as mean over outputs).
  3. s_j = sqrt(Î_j / max Î + 1e−6) (normalized by the maximum; the small constant keeps dead
     inputs invertible); SVD of W·diag(s), keep the top k = floor((1 − ratio)·m·n/(m+n))
     triplets, unweight: V ← diag(s)⁻¹ V. Stored as U_k√Σ_k and √Σ_k V_kᵀ diag(s)⁻¹.
The Fisher rows depend only on the dense model and the calibration set and are cached, so
every ratio reuses one gradient pass. Same ratio for every layer; layers where k would not save parameters stay dense.
The paper fine-tunes on the task and uses task data; here the loss is the LM loss on the
calibration windows and there is no fine-tuning. Execution path: low-rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import CalibrationEngine
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.lowrank.common import ratio_param, column_scaled_factors, compress_uniform, decoder_linears, details
from slimbench.params import check_params


@dataclass(frozen=True)
class FWSVDConfig:
    ratio: float = ratio_param()

    def __post_init__(self) -> None:
        check_params(self)


@register_method("fwsvd", config=FWSVDConfig, family="low-rank", produces="factored", calibration=True)
class FWSVD(MethodBase):
    def apply(self, bundle, calib) -> MethodResult:
        keep = 1.0 - self.config.ratio
        engine = CalibrationEngine(bundle, calib)  # caches the Fisher rows: every ratio shares them
        fisher = engine.cached("fwsvd-fisher-rows:lm-loss:per-window", lambda: fisher_rows(bundle, engine))  # name -> [in]
        scales = {name: (f / f.max().clamp_min(1e-300) + 1e-6).sqrt() for name, f in fisher.items()}
        with torch.no_grad():
            layers, dense = compress_uniform(
                bundle.model, bundle.adapter, keep, lambda t, w, k: column_scaled_factors(w, k, scales[t.name])
            )
        extra = {"allocation": "uniform", "fisher_samples": len(calib), "fisher_axis": "input features (row sums in x·W layout)"}
        return MethodResult(execution_path="low-rank", details=details(keep, dense, **extra), layers=layers)


def fisher_rows(bundle, engine: CalibrationEngine) -> dict[str, torch.Tensor]:
    """(1/N) Σ_d Σ_out (∂L_d/∂W)² per input feature of every decoder linear, float64 [in]: the
    gradients of the engine's whole-model objective (mean next-token NLL), one window at a time."""
    model, adapter = bundle.model, bundle.adapter
    targets = decoder_linears(model, adapter)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for t in targets:
        t.module.weight.requires_grad_(True)
    sums = {t.name: torch.zeros(t.inp, dtype=torch.float64, device=t.module.weight.device) for t in targets}  # on the weights' device

    def accumulate(_i: int) -> None:
        for t in targets:
            g = t.module.weight.grad
            g = (g.t() if adapter.transposed_weights else g).double()  # [out, in]
            sums[t.name] += (g**2).sum(0)
            t.module.weight.grad = None

    try:
        engine.objective(backward=accumulate, desc="fwsvd fisher")
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
    return {name: s / len(engine.calib) for name, s in sums.items()}
