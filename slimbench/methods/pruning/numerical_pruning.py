"""Numerical Pruning (Shen et al., "Numerical Pruning for Efficient Autoregressive Models",
AAAI 2025, arXiv 2412.12441). No public code; implemented from the paper as specified in
METHODS-papers.md §1.

Algorithm (structured: attention KV groups and MLP intermediate channels, physically removed):
  1. Calibration (dense model, one pass, cached): Gram G = XᵀX / N of the inputs X of o_proj
     (concatenated head outputs) and down_proj (act(gate)·up), N = calibration tokens.
  2. Per layer and module (o_proj, down_proj only), with W = weightᵀ [D_in, D_out]:
     A = (W Wᵀ) ∘ G, damped A + δ·mean(diag A)·I. The relaxed mask z minimises
     ½‖X W − X(z∘W)‖² + ½λ(⟨1,z⟩ − (1−ρ)D)². The objective is quadratic, so Newton
     (Algorithm 1) converges in one step to u = 1 − z = λρD·A⁻¹1 / (1 + λ·1ᵀA⁻¹1); default
     is the λ→∞ limit u = ρD·A⁻¹1 / 1ᵀA⁻¹1 (each layer's u sums to ρD). ``lam`` gives a finite
     λ (in units of mean(diag A)); ``newton_steps`` > 0 runs Algorithm 1 from z₀ = 1 instead.
  3. Head score = mean z over the head's D_h channels; GQA (the paper is silent): KV-group
     score = mean over its g query heads, scaled by α_group = (2g+2)·D_h/3 (= the paper's
     α = 4·D_h/3 for g = 1). MLP channels keep their own z.
  4. Allocation ``global`` (paper): one ascending sort of Ψ = α·z_group ∪ z_mlp over all
     layers; prune the lowest ⌊ρ·(#groups + #channels)⌋ units (``ratio_of=units``, the
     paper's count) or the lowest units whose parameters sum closest to ρ·(attention+MLP
     parameters) (``ratio_of=params``). ``uniform``: ⌊ρ·n⌋ groups and channels per layer.
     A layer never loses all its groups or channels (the best one is kept; see details).
  5. Compensation on o_proj/down_proj (Theorem 3 in least-squares form), H = G + γ·mean(diag G)·I:
     W_keep ← W_keep + H_kk⁻¹ H_kp W_p, then the pruned rows/columns are removed physically.
Execution path ``sliced-dense``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import CalibrationEngine, LinearInputs
from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.pruning import structured as st
from slimbench.params import check_params, param

STATS_KEY = "LinearInputs(o,down;gram,sq_sum,sum)"  # shared with FLAP: one dense pass serves both


@dataclass(frozen=True)
class NumericalPruningConfig:
    ratio: float = param(0.2, "fraction removed (of what: ratio_of)", ge=0, lt=1)
    ratio_of: str = param("units", "'units': heads (KV groups) + channels (paper); 'params': attention+MLP parameters",
                          choices=("units", "params"))
    allocation: str = param("global", "'global' (paper: one ranking over all layers) or 'uniform' (per layer)",
                            choices=("global", "uniform"))
    lam: float | None = param(None, "null: the λ→∞ closed form; else λ = lam·mean(diag A)", gt=0, nullable=True)
    newton_steps: int = param(0, "0: closed form; T > 0: Algorithm 1 (needs a finite lam)", ge=0)
    damping: float = param(0.01, "δ: A + δ·mean(diag A)·I before solving", gt=0)
    gamma: float = param(0.01, "γ: H + γ·mean(diag H)·I in the compensation", ge=0)
    compensate: bool = param(True, "least-squares compensation of the next layer", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)
        if self.newton_steps > 0 and self.lam is None:
            raise ConfigError("newton_steps > 0 needs a finite lam")


# -- the score --------------------------------------------------------------------------------
def score_matrix(weight: torch.Tensor, gram: torch.Tensor, damping: float) -> torch.Tensor:
    """A = (W Wᵀ) ∘ G + δ·mean(diag)·I with W = weightᵀ; weight [out, in], gram [in, in]."""
    w = weight.double()
    a = (w.t() @ w) * gram.double()  # [in, in]
    return a + damping * a.diagonal().mean() * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)


def closed_form_scores(a: torch.Tensor, rho: float, lam: float | None) -> torch.Tensor:
    """z = 1 − u*, u* = λρD·A⁻¹1/(1 + λ·1ᵀA⁻¹1) (λ absolute), or its λ→∞ limit (lam None)."""
    d = a.shape[0]
    ainv1 = torch.linalg.solve(a, torch.ones(d, dtype=a.dtype, device=a.device))
    if lam is None:
        u = rho * d * ainv1 / ainv1.sum()
    else:
        u = lam * rho * d * ainv1 / (1 + lam * ainv1.sum())
    return 1 - u


def newton_scores(a: torch.Tensor, rho: float, lam: float, steps: int, z0: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 1: z ← z − H⁻¹g, g = A(z − 1) + λ(⟨1,z⟩ − r)1, H = A + λ11ᵀ, r = (1−ρ)D."""
    d = a.shape[0]
    ones = torch.ones(d, dtype=a.dtype, device=a.device)
    hess = a + lam * torch.ones(d, d, dtype=a.dtype, device=a.device)
    z = ones.clone() if z0 is None else z0.double()
    for _ in range(steps):
        grad = a @ (z - ones) + lam * (z.sum() - (1 - rho) * d) * ones
        z = z - torch.linalg.solve(hess, grad)
    return z


def compensated_weight(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, gamma: float) -> torch.Tensor:
    """Kept input columns after W_keep ← W_keep + H_kk⁻¹ H_kp W_p: [out, kept]."""
    h = gram.double()
    h = h + gamma * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    k, p = keep.nonzero().flatten(), (~keep).nonzero().flatten()
    w = weight.double()  # [out, in]
    if p.numel() == 0:
        return weight[:, k].clone()
    delta = torch.linalg.solve(h[k][:, k], h[k][:, p] @ w[:, p].t())  # [kept, out]
    return (w[:, k] + delta.t()).to(weight.dtype)


# -- the method -------------------------------------------------------------------------------
@register_method("numerical_pruning", config=NumericalPruningConfig, family="pruning", produces="sliced", calibration=True,
                 accepts={"dense", "masked", "sliced"})
class NumericalPruning(MethodBase):
    def check(self, adapter) -> None:
        st.check_structured(adapter)

    def _scores(self, weight, gram) -> tuple[torch.Tensor, float | None]:
        cfg = self.config
        a = score_matrix(weight, gram, cfg.damping)
        lam = None if cfg.lam is None else cfg.lam * float(a.diagonal().mean())
        if cfg.newton_steps:
            return newton_scores(a, cfg.ratio, lam, cfg.newton_steps), lam
        return closed_form_scores(a, cfg.ratio, lam), lam

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter, model = self.config, bundle.adapter, bundle.model
        stats = CalibrationEngine(bundle, calib).collect(
            lambda i, block: {"in": LinearInputs(("o", "down"), ("gram", "sq_sum", "sum"))}, cache_key=STATS_KEY, desc="numerical pruning stats")
        blocks = adapter.get_blocks(model)
        geos = [st.block_geometry(adapter, model.config, b) for b in blocks]
        layers = []
        for block, geo, s in zip(blocks, geos, stats):
            lin = adapter.block_linears(block)
            grams = {r: s["in"][r].gram.double() / s["in"][r].tokens for r in ("o", "down")}
            z_attn, lam_o = self._scores(lin["o"].weight, grams["o"])
            z_mlp, lam_d = self._scores(lin["down"].weight, grams["down"])
            alpha = (2 * geo.group_size + 2) * geo.head_dim / 3
            layers.append({"group": alpha * st.group_mean(z_attn, geo), "channel": z_mlp, "grams": grams, "lam": (lam_o, lam_d), "alpha": alpha})
        unit_params = [st.unit_params(adapter, b, g) for b, g in zip(blocks, geos)]
        prune = self._select(layers, unit_params)
        params_before = st.prunable_params(adapter, model)
        removals = []
        for block, geo, layer, (pg, pc) in zip(blocks, geos, layers, prune):
            removal = st.guarded_removal(~pg, ~pc, layer["group"], layer["channel"])
            self._remove(adapter, block, geo, removal, layer["grams"])
            removals.append(removal)
        details, reports = st.summarize(adapter, model, removals, params_before, [u[0] for u in unit_params], [u[1] for u in unit_params])
        details.update(self._score_details(layers))
        return MethodResult(execution_path="sliced-dense", details=details, notes=self._notes(details), layers=reports)

    def _select(self, layers, unit_params) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        by_params = cfg.ratio_of == "params"
        if cfg.allocation == "uniform":
            return [(st.select_global_lowest(l["group"], torch.full_like(l["group"], float(pg)), cfg.ratio, by_params),
                     st.select_global_lowest(l["channel"], torch.full_like(l["channel"], float(pc)), cfg.ratio, by_params))
                    for l, (pg, pc) in zip(layers, unit_params)]
        scores = torch.cat([torch.cat([l["group"], l["channel"]]) for l in layers])
        weights = torch.cat([torch.cat([torch.full_like(l["group"], float(pg)), torch.full_like(l["channel"], float(pc))])
                             for l, (pg, pc) in zip(layers, unit_params)])
        mask = st.select_global_lowest(scores, weights, cfg.ratio, by_params)
        out, start = [], 0
        for l in layers:
            ng, nc = l["group"].numel(), l["channel"].numel()
            out.append((mask[start:start + ng], mask[start + ng:start + ng + nc]))
            start += ng + nc
        return out

    def _remove(self, adapter, block, geo, removal, grams) -> None:
        cfg, lin = self.config, adapter.block_linears(block)
        keep_o = st.group_to_channels(removal.keep_groups.nonzero().flatten(), geo.group_channels)
        mask_o = torch.zeros(lin["o"].in_features, dtype=torch.bool, device=lin["o"].weight.device)
        mask_o[keep_o] = True
        o_w = compensated_weight(lin["o"].weight, grams["o"], mask_o, cfg.gamma) if cfg.compensate else None
        d_w = compensated_weight(lin["down"].weight, grams["down"], removal.keep_channels, cfg.gamma) if cfg.compensate else None
        st.remove_attention_groups(adapter, block, geo, removal.keep_groups.nonzero().flatten(), o_weight=o_w)
        st.remove_mlp_channels(adapter, block, removal.keep_channels.nonzero().flatten(), down_weight=d_w)

    def _score_details(self, layers) -> dict:
        cfg = self.config
        return {
            "ratio": cfg.ratio, "ratio_of": cfg.ratio_of, "allocation": cfg.allocation,
            "solver": f"newton({cfg.newton_steps})" if cfg.newton_steps else "closed_form",
            "lambda": "inf" if cfg.lam is None else [[round(x, 6) for x in l["lam"]] for l in layers],
            "damping": cfg.damping, "gamma": cfg.gamma, "compensate": cfg.compensate,
            "alpha_group": layers[0]["alpha"],
            # the scaled scores the global sort compares (prune lowest first)
            "group_score_range": [round(float(min(l["group"].min() for l in layers)), 4),
                                  round(float(max(l["group"].max() for l in layers)), 4)],
            "channel_score_range": [round(float(min(l["channel"].min() for l in layers)), 4),
                                    round(float(max(l["channel"].max() for l in layers)), 4)],
        }

    def _notes(self, details) -> list[str]:
        notes = [f"removed {details['kv_groups_removed']}/{details['kv_groups_total']} KV groups and "
                 f"{details['channels_removed']}/{details['channels_total']} MLP channels; "
                 f"attention+MLP parameters reduced by {details['param_reduction']:.2%}"]
        if details["kv_groups_removed"] == 0 and details["channels_removed"] and details["allocation"] == "global":
            lo, hi = details["group_score_range"], details["channel_score_range"]
            notes.append(f"no attention removed: the α-scaled KV-group scores ({lo[0]:.3g}..{lo[1]:.3g}, α={details['alpha_group']:.1f}) "
                         f"all lie above the MLP channel scores ({hi[0]:.3g}..{hi[1]:.3g}), so the global sort only reaches channels "
                         "(the paper's Ψ as written; allocation=uniform prunes both)")
        if details["guard_fired"]:
            notes.append(f"layers {details['guard_fired']}: every unit was selected, the best one was kept")
        return notes
