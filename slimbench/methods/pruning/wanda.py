"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, ICLR 2024,
arXiv 2306.11695; reference locuslab/wanda @ 8e8fc87, ``lib/prune.py::prune_wanda``).

Algorithm, block by block (calibration engine, ``propagate_error=True``):
  1. run the block on every calibration sample with hooks on *all* its linears at once
     (the block is still dense; its inputs come from the already pruned earlier blocks) and
     accumulate ‖X_j‖₂² = Σ over all calibration tokens of x_j² per input feature j;
  2. for every linear: score S_ij = |W_ij| · ‖X_j‖₂ [out, in];
     unstructured: in each output row, zero the ⌊sparsity · in⌋ lowest scores (a stable sort
     of each row, as the reference); N:M: in every group of M consecutive inputs of each row,
     zero the N lowest (``topk(largest=False)``, as the reference);
  3. no weight update; the pruned block is re-run to produce the next block's inputs.

The reference accumulates ``scaler_row`` = mean over samples of ‖X_j‖², i.e. ‖X_j‖² divided
by the number of samples: a constant per layer that cannot change a per-row ranking. Here
the engine's float64 ``sq_sum`` is used and the score is formed in the weight's dtype.

``use_variant`` (off by default, as in the reference) is the appendix variant: per row, the
threshold is the largest sorted score whose cumulative sum stays ≤ α · (row sum), with α
found by bisection (start 0.4 in [0, 0.8], stop when the layer's sparsity is within 0.001
of the target or the interval is narrower than 0.001). It applies to unstructured sparsity
only. Where no score of a row fits under α · (row sum), nothing is pruned in that row (the
reference would index position −1 there).

Execution path: masked-dense (zeros stored in dense tensors, no speedup expected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import LinearInputs, Step
from slimbench.errors import ConfigError
from slimbench.methods.base import LayerReport, MethodBase, MethodResult, SequentialPlan, register_method
from slimbench.methods.pruning.masks import PATTERN_DOC, check_sparsity, lowest_fraction_mask, nm_mask, parse_pattern
from slimbench.params import check_params, param


@dataclass(frozen=True)
class WandaConfig:
    sparsity: float = param(0.5, "fraction of weights removed per output row", ge=0, lt=1)
    pattern: str = param("unstructured", PATTERN_DOC)
    use_variant: bool = param(False, "the appendix's cumulative-sum threshold (unstructured only)", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)
        check_sparsity(self.sparsity, self.pattern)
        if self.use_variant and parse_pattern(self.pattern) is not None:
            raise ConfigError(f"use_variant applies to unstructured sparsity only, got pattern {self.pattern}")


def wanda_score(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """S = |W| · ‖X_j‖₂ broadcast over rows: weight [out, in], col_norm [in] -> [out, in]."""
    return weight.abs() * col_norm.to(weight.dtype).reshape(1, -1)


def variant_mask(score: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, float]:
    """The appendix variant: (mask [out, in], the α found by bisection)."""
    ordered = torch.sort(score, dim=-1, stable=True).values  # [out, in]
    cumulative = torch.cumsum(ordered, dim=1)
    row_sum = score.sum(dim=1, keepdim=True)  # [out, 1]

    def at(alpha: float) -> tuple[torch.Tensor, float]:
        count = (cumulative <= row_sum * alpha).sum(dim=1, keepdim=True)  # [out, 1]
        thresh = torch.gather(ordered, 1, (count - 1).clamp_min(0))
        thresh = torch.where(count > 0, thresh, torch.full_like(thresh, float("-inf")))
        mask = score <= thresh
        return mask, mask.float().mean().item()

    alpha, low, high = 0.4, 0.0, 0.8
    mask, current = at(alpha)
    while abs(current - sparsity) > 0.001 and high - low >= 0.001:
        if current > sparsity:
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        mask, current = at(alpha)
    return mask, alpha


def wanda_mask(score: torch.Tensor, config: WandaConfig) -> tuple[torch.Tensor, dict]:
    """The mask (True = prune) for one layer's score [out, in], and details for the record."""
    nm = parse_pattern(config.pattern)
    if nm is not None:
        return nm_mask(score, *nm), {}
    if config.use_variant:
        mask, alpha = variant_mask(score, config.sparsity)
        return mask, {"alpha": round(alpha, 6)}
    return lowest_fraction_mask(score, config.sparsity, per_row=True), {}


@register_method("wanda", config=WandaConfig, family="pruning", produces="masked", calibration=True)
class Wanda(MethodBase):
    def check(self, adapter) -> None:
        if not adapter.linears:
            raise ConfigError(f"wanda: the {adapter.family} adapter declares no linear layers to prune")

    def plan(self, bundle, calib) -> SequentialPlan:
        adapter, layers = bundle.adapter, []

        def steps(i, block):
            roles = tuple(adapter.block_linears(block))

            @torch.no_grad()
            def compress(stats):
                for role in roles:
                    weight = adapter.weight_matrix(adapter.block_linears(block)[role])  # [out, in]
                    mask, extra = wanda_mask(wanda_score(weight, stats["in"][role].col_norm), self.config)
                    weight.masked_fill_(mask, 0.0)
                    layers.append(LayerReport(adapter.layer_name(i, role), role, "pruned", extra=extra))

            return [Step({"in": LinearInputs(roles, {"sq_sum"})}, compress)]

        def finish(report) -> MethodResult:
            nm = parse_pattern(self.config.pattern)
            return MethodResult(
                execution_path="masked-dense",
                details={"pattern": self.config.pattern, "use_variant": self.config.use_variant, "calibration": _engine_summary(report)},
                notes=[f"{nm[0]}:{nm[1]} pattern stored dense: no sparse kernel is used" if nm else "unstructured zeros stored dense"],
                layers=layers,
            )

        return SequentialPlan(steps, finish, propagate_error=True, desc="wanda")


def _engine_summary(report) -> dict:
    return {"blocks": report.blocks, "samples": report.samples, "tokens_per_sample": report.tokens_per_sample,
            "propagate_error": report.propagate_error}
