"""ASVD: activation-aware SVD with sensitivity-based per-layer ranks.

Yuan et al., "ASVD: Activation-aware Singular Value Decomposition for Compressing Large
Language Models" (arXiv 2312.05821); reference hahnyuan/ASVD4LLM @ 8630427 (``asvd.py``,
``act_aware_utils.calib_input_distribution``, ``sensitivity.calib_sensitivity_ppl``,
``binary_search.binary_search_truncation_rank``, ``modules/svd_linear.SVDLinear``).

Algorithm:
  1. Activation scale per input channel j of every decoder linear: s_j = mean|x_j|^α + 1e−6
     over the calibration tokens of the dense model (α = 0.5, ``--scaling_method abs_mean``).
  2. Factorization at a kept-parameter ratio r: k = floor(r·m·n/(m+n)); SVD of W·diag(s),
     keep top-k, V ← diag(s)⁻¹ V; factors U_k√Σ_k and √Σ_k V_kᵀ (``sigma_fuse=UV``).
  3. Sensitivity (``allocation: sensitivity``): for every decoder linear alone and every
     candidate r in {0.4, …, 0.9}, factor it at r and measure the perplexity of the model on
     the calibration windows (the engine's whole-model objective: exp of the mean over windows
     of each window's mean next-token NLL), then restore it.
  4. Binary search: sort all (layer, r, ppl) by ppl, descending; for a cut ``mid`` every layer
     takes the smallest r among the entries sorted_list[mid:] (1 = dense if none); the kept
     ratio Σ numel·r / Σ numel is compared with the target (1 − ratio): above it, high = mid,
     else low = mid + 1. As in the reference, the allocation of the *last* ``mid`` is used.
  5. Factor every layer whose r < 1 (layers where k would not save parameters stay dense).

Differences from the reference, stated: only the decoder linears are candidates (the
reference's module walk also includes lm_head; here embeddings/lm_head stay untouched and
tied); the SVD is exact (``torch.linalg.svd`` in float64) where the reference uses the
randomized ``torch.svd_lowrank``; calibration windows come from WikiText-2 validation (the
reference: 32 × 2048 WikiText-2 train, seed 233). The sensitivity pass costs
(#linears × #candidates × samples) model forwards — from the changed block on only: the dense
inputs of each block are kept and advanced (``calibration.SuffixObjective``, the same numbers for
about half the block work) — so ``sensitivity_samples`` and
``sensitivity_seqlen`` can limit it (null = all calibration windows at full length, the
reference); ``allocation: uniform`` skips it. The sensitivity table depends only on the dense
model, so it is cached and shared by every target ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from slimbench.calibration import CalibrationEngine, LinearInputs, SuffixObjective
from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.lowrank.common import (
    ratio_param, column_scaled_factors, decoder_linears, details, factored_report, install, keep_rank, weight64,
)
from slimbench.models.adapters import set_path
from slimbench.params import check_params, param

CANDIDATES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the reference's param_ratio_candidates


@dataclass(frozen=True)
class ASVDConfig:
    ratio: float = ratio_param()
    alpha: float = param(0.5, "exponent of the activation scale mean|x|^alpha", ge=0, le=1)
    allocation: str = param("sensitivity", "'sensitivity' (reference: per-layer ranks by binary search) or 'uniform' (same keep everywhere)",
                            choices=("sensitivity", "uniform"))
    candidates: tuple = param(CANDIDATES, "kept-parameter ratios tried per layer in the sensitivity pass, each in (0, 1)")
    sensitivity_samples: int | None = param(None, "calibration windows scored per candidate (null = all)", ge=1, nullable=True)
    sensitivity_seqlen: int | None = param(None, "tokens of each window scored (null = the full window)", ge=2, nullable=True)

    def __post_init__(self) -> None:
        check_params(self)
        object.__setattr__(self, "candidates", tuple(float(c) for c in self.candidates))
        if not self.candidates or any(not 0.0 < c < 1.0 for c in self.candidates):
            raise ConfigError(f"candidates must be non-empty kept ratios in (0, 1), got {list(self.candidates)}")


@register_method("asvd", config=ASVDConfig, family="low-rank", produces="factored", calibration=True)
class ASVD(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, model, adapter = self.config, bundle.model, bundle.adapter
        engine = CalibrationEngine(bundle, calib)
        targets = decoder_linears(model, adapter)
        scales = self._scales(engine, adapter, targets)
        extra: dict = {"allocation": cfg.allocation, "alpha": cfg.alpha}
        if cfg.allocation == "uniform":
            keeps = {t.name: 1.0 - cfg.ratio for t in targets}
        else:
            key = f"asvd-sensitivity:alpha={cfg.alpha}:cands={list(cfg.candidates)}:n={cfg.sensitivity_samples}:t={cfg.sensitivity_seqlen}"
            table = engine.cached(key, lambda: self._sensitivity(bundle, engine, targets, scales))
            keeps, search = binary_search(table, {t.name: t.numel for t in targets}, 1.0 - cfg.ratio)
            extra.update(search=search, sensitivity_ppl={n: {str(r): p for r, p in row.items()} for n, row in table.items()})
        layers, dense = [], []
        for t in targets:
            k = keep_rank(t.out, t.inp, keeps[t.name]) if keeps[t.name] < 1.0 else None
            if k is None:
                dense.append(t.name)
                continue
            install(model, adapter, t, *column_scaled_factors(weight64(adapter, t.module), k, scales[t.name]))
            layers.append(factored_report(t, k, keep=keeps[t.name]))
        extra["layer_keep"] = keeps
        return MethodResult(execution_path="low-rank", details=details(1.0 - cfg.ratio, dense, **extra), layers=layers)

    # -- steps -------------------------------------------------------------------------------
    def _scales(self, engine, adapter, targets) -> dict[str, torch.Tensor]:
        """mean|x_j|^α + 1e−6 per input channel of every target, from the dense model."""

        def observers(i, block):
            return {"inputs": LinearInputs(tuple(adapter.block_linears(block)), {"abs_sum"})}

        stats = engine.collect(observers, cache_key="LinearInputs:abs_sum:all-roles", desc="asvd act")
        out = {}
        for t in targets:
            out[t.name] = stats[t.block]["inputs"][t.role].mean_abs.double() ** self.config.alpha + 1e-6  # [in]
        return out

    def _sensitivity(self, bundle, engine, targets, scales) -> dict[str, dict[float, float]]:
        """ppl of the calibration windows with one layer factored at each candidate ratio."""
        cfg, model, adapter = self.config, bundle.model, bundle.adapter
        windows = [bundle.io.crop(s, cfg.sensitivity_seqlen) for s in engine.calib.samples(cfg.sensitivity_samples)]
        suffix = SuffixObjective(bundle, windows)  # exact shortcut: only blocks t.block.. are re-run
        table: dict[str, dict[float, float]] = {}
        for t in tqdm(sorted(targets, key=lambda t: t.block), desc="asvd sensitivity", unit="layer", mininterval=2.0):
            while suffix.available and suffix.block < t.block:
                suffix.advance()
            w = weight64(adapter, t.module)  # [out, in]
            block = adapter.get_blocks(model)[t.block]
            table[t.name] = {}
            for r in cfg.candidates:
                k = keep_rank(t.out, t.inp, r)
                if k is None:
                    continue
                install(model, adapter, t, *column_scaled_factors(w, k, scales[t.name]))
                nll = suffix.score() if suffix.available else engine.objective(windows)
                table[t.name][r] = math.exp(float(nll.mean()))
                set_path(block, t.path, t.module)  # restore the dense layer
        return table


def binary_search(table: dict[str, dict[float, float]], numel: dict[str, int], target_keep: float) -> tuple[dict, dict]:
    """Per-layer kept ratios from the sensitivity table (the reference's binary search)."""
    entries = sorted(((name, r, ppl) for name, row in table.items() for r, ppl in row.items() if r < 1), key=lambda e: -e[2])
    total = sum(numel.values())

    def allocation(cut: int) -> dict[str, float]:
        keeps = {name: 1.0 for name in numel}
        for name, r, _ in entries[cut:]:
            keeps[name] = min(keeps[name], r)
        return keeps

    def kept(keeps: dict) -> float:
        return sum(numel[n] * keeps[n] for n in numel) / total

    low, high, mid = 0, len(entries) - 1, 0
    while low < high:
        mid = (low + high) // 2
        if kept(allocation(mid)) > target_keep:
            high = mid
        else:
            low = mid + 1
    keeps = allocation(mid)
    return keeps, {"cut": mid, "entries": len(entries), "target_keep": target_keep, "search_keep": kept(keeps)}
