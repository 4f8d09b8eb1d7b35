"""FLAP: fluctuation-based adaptive structured pruning (An et al., "Fluctuation-based Adaptive
Structured Pruning for Large Language Models", AAAI 2024, arXiv 2312.11983), following the
reference code CASIA-IVA-Lab/FLAP @ 3bb57db (lib/prune.py ``prune_flap``, lib/layerwrapper.py
``BiasGPT``) with its defaults: metric WIFV, structure AL-AM, bias compensation on.

Algorithm:
  1. Calibration (dense model, one pass; the reference also never feeds pruned outputs on):
     per input channel j of o_proj and down_proj, the mean x̄_j and variance Var(x_j) over all
     calibration tokens.
  2. WIFV score s_j = Var(x_j)·‖W_:,j‖² (column norm over the outputs of weight [out, in]).
     As in the code (not the paper), the attention score is squared: s_j².
  3. Standardise each layer's scores over its channels ((s − mean)/std, unbiased std), per
     module. Attention: mean of the standardised channel scores over each unit's channels.
     The reference's unit is a 128-channel head of an MHA model (head_dim hard-coded to 128);
     here the unit is a KV group (g query heads, g·head_dim channels, from the model's
     geometry), so GQA models lose whole groups and keep their query/KV ratio.
  4. AL-AM: one ranking of all units (descending), each weighted by its parameter count
     relative to an MLP channel (the code's 512/3 = 4·128·D/(3·D) for a LLaMA head; here the
     measured group/channel parameter ratio, = (2g+2)·head_dim/3 without biases). The threshold
     is the score where the cumulative weight is closest to (1 − ratio)·total; units scoring
     strictly above it are kept. So ``ratio`` is natively a fraction of attention+MLP parameters
     (``ratio_of=params``); ``ratio_of=units`` weights every unit 1.
  5. Bias compensation: the mean input of the removed channels is folded into a new bias of
     o_proj / down_proj: b = W[:, pruned] · x̄[pruned]; then the layers are sliced.
A layer never loses all its groups or channels (the best one is kept; see details).
Differences from the reference: Var is the exact population variance over tokens (the
reference's streaming update is a per-sample approximation of it; scale is irrelevant after
standardisation); calibration is the run's calib set (the reference uses 1024 × 128 tokens of
WikiText-2 train: ``calib.nsamples=1024 calib.seqlen=128`` reproduces its shape).
Execution path ``sliced-dense``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import CalibrationEngine, LinearInputs
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.pruning import structured as st
from slimbench.methods.pruning.numerical_pruning import STATS_KEY
from slimbench.params import check_params, param

METRICS = ("WIFV", "IFV", "WIFN")


@dataclass(frozen=True)
class FlapConfig:
    ratio: float = param(0.2, "fraction removed (of what: ratio_of)", ge=0, lt=1)
    ratio_of: str = param("params", "'params': attention+MLP parameters (reference AL-AM weighting); 'units': KV groups + channels",
                          choices=("params", "units"))
    metric: str = param("WIFV", "fluctuation score (reference default WIFV); IFV = Var(x_j), WIFN = mean_i |W_ij|·sqrt(E[x_j²])",
                        choices=METRICS)
    bias: bool = param(True, "fold the mean input of pruned channels into a bias", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)


def channel_metric(metric: str, weight: torch.Tensor, stats) -> torch.Tensor:
    """Per input channel score of a linear with weight [out, in]; stats: its InputStats."""
    w = weight.double()
    if metric == "IFV":
        return stats.variance
    if metric == "WIFV":
        return stats.variance * w.pow(2).sum(0)
    return (w.abs() * (stats.sq_sum / stats.tokens).sqrt()[None, :]).mean(0)  # WIFN


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


def flap_threshold_keep(scores: torch.Tensor, weights: torch.Tensor, ratio: float) -> torch.Tensor:
    """AL-AM: sort descending, threshold where cumsum(weight) is closest to (1−ratio)·Σweight,
    keep the units strictly above it (the reference's rule, ties included). ratio 0 keeps
    everything (the reference's rule would still drop the lowest unit)."""
    if ratio == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    sorted_scores, order = torch.sort(scores, descending=True)
    cum = torch.cumsum(weights[order], 0)
    threshold = sorted_scores[torch.argmin((cum - weights.sum() * (1 - ratio)).abs())]
    return scores > threshold


@register_method("flap", config=FlapConfig, family="pruning", produces="sliced", calibration=True, accepts={"dense", "masked", "sliced"})
class Flap(MethodBase):
    def check(self, adapter) -> None:
        st.check_structured(adapter)

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter, model = self.config, bundle.adapter, bundle.model
        stats = CalibrationEngine(bundle, calib).collect(
            lambda i, block: {"in": LinearInputs(("o", "down"), ("gram", "sq_sum", "sum"))}, cache_key=STATS_KEY, desc="flap stats")
        blocks = adapter.get_blocks(model)
        geos = [st.block_geometry(adapter, model.config, b) for b in blocks]
        group_scores, channel_scores = [], []
        for block, geo, s in zip(blocks, geos, stats):
            lin = adapter.block_linears(block)
            attn = channel_metric(cfg.metric, lin["o"].weight, s["in"]["o"]) ** 2  # squared, as the code
            group_scores.append(st.group_mean(standardize(attn), geo))
            channel_scores.append(standardize(channel_metric(cfg.metric, lin["down"].weight, s["in"]["down"])))
        unit_params = [st.unit_params(adapter, b, g) for b, g in zip(blocks, geos)]
        keep = self._select(group_scores, channel_scores, unit_params)
        params_before = st.prunable_params(adapter, model)
        removals = []
        for block, geo, s, gs, cs, (kg, kc) in zip(blocks, geos, stats, group_scores, channel_scores, keep):
            removal = st.guarded_removal(kg, kc, gs, cs)
            self._remove(adapter, block, geo, removal, s["in"])
            removals.append(removal)
        details, layers = st.summarize(adapter, model, removals, params_before, [u[0] for u in unit_params], [u[1] for u in unit_params])
        details.update({"ratio": cfg.ratio, "ratio_of": cfg.ratio_of, "metric": cfg.metric, "structure": "AL-AM",
                        "bias_compensation": cfg.bias,
                        "unit_weight_group": [round(pg / pc, 4) for pg, pc in unit_params] if cfg.ratio_of == "params" else 1})
        notes = [f"removed {details['kv_groups_removed']}/{details['kv_groups_total']} KV groups and "
                 f"{details['channels_removed']}/{details['channels_total']} MLP channels; "
                 f"attention+MLP parameters reduced by {details['param_reduction']:.2%}"]
        if details["guard_fired"]:
            notes.append(f"layers {details['guard_fired']}: every unit was selected, the best one was kept")
        return MethodResult(execution_path="sliced-dense", details=details, notes=notes, layers=layers)

    def _select(self, group_scores, channel_scores, unit_params) -> list[tuple[torch.Tensor, torch.Tensor]]:
        by_params = self.config.ratio_of == "params"
        scores = torch.cat([torch.cat([g, c]) for g, c in zip(group_scores, channel_scores)])
        weights = torch.cat([torch.cat([torch.full_like(g, pg / pc if by_params else 1.0), torch.ones_like(c)])
                             for g, c, (pg, pc) in zip(group_scores, channel_scores, unit_params)])
        keep = flap_threshold_keep(scores, weights, self.config.ratio)
        out, start = [], 0
        for g, c in zip(group_scores, channel_scores):
            out.append((keep[start:start + g.numel()], keep[start + g.numel():start + g.numel() + c.numel()]))
            start += g.numel() + c.numel()
        return out

    def _remove(self, adapter, block, geo, removal, stats) -> None:
        lin = adapter.block_linears(block)
        keep_o = st.group_to_channels(removal.keep_groups.nonzero().flatten(), geo.group_channels)
        pruned_o = torch.ones(lin["o"].in_features, dtype=torch.bool, device=lin["o"].weight.device)
        pruned_o[keep_o] = False
        o_bias = self._bias(lin["o"], stats["o"].mean, pruned_o)
        d_bias = self._bias(lin["down"], stats["down"].mean, ~removal.keep_channels)
        st.remove_attention_groups(adapter, block, geo, removal.keep_groups.nonzero().flatten(), o_bias=o_bias)
        st.remove_mlp_channels(adapter, block, removal.keep_channels.nonzero().flatten(), down_bias=d_bias)

    def _bias(self, linear, mean: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor | None:
        """b = W[:, pruned]·x̄[pruned] (+ the existing bias), or None without compensation."""
        if not self.config.bias:
            return None
        w = linear.weight  # [out, in]
        bias = (w.double()[:, pruned] @ mean[pruned].double()).to(w.dtype)  # [out]
        return bias if linear.bias is None else linear.bias.detach() + bias
