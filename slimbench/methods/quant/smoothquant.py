"""SmoothQuant: W8A8 with activation outliers migrated into the weights (Xiao et al., ICML
2023, arXiv 2211.10438; reference mit-han-lab/smoothquant c61476d: smoothquant/smooth.py,
fake_quant.py ``W8A8Linear``, calibration.py ``get_act_scales``).

1. From the unmodified model (the reference gathers all activation scales in one pass before
   smoothing): max |X_j| per input channel j of the linears reading each pre-norm (attention:
   q/k/v; MLP: gate/up, or fc1), over all calibration tokens.
   (Which linears each pre-norm feeds is the adapter's ``norm_feeds`` table.)
2. For each such norm and its linears: w_j = max over the linears of max_i |W_ij| (≥ 1e-5),
   s_j = max(max|X_j|^α / w_j^(1−α), 1e-5); the norm's output is divided by s (weight, and
   bias if any) and the linears' input columns multiplied by s (exact in float).
   o_proj and down_proj are not smoothed (no norm precedes them), as in the reference.
3. Every block linear becomes W8A8: symmetric per-output-channel absmax int8 weights,
   activations quantized per token (absmax/127, round) on the fly, int8×int8→int32 by
   ``torch._int_mm`` and rescaled: a real int8 kernel on CPU (``int8-kernel``).
α = 0.5 by default (the paper uses 0.85 for Llama-2). The reference calibrates on 512 Pile-val
samples of ≤ 512 tokens; offline this uses the configured set. BMM inputs (attention
scores) stay float (the reference's ``quantize_bmm_input=False`` for Llama-like models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import CalibrationEngine, LinearInputs
from slimbench.errors import ConfigError
from slimbench.kernels.qlinear import QuantLinear
from slimbench.methods.base import LayerReport, MethodBase, MethodResult, register_method
from slimbench.models.adapters import set_path
from slimbench.params import check_params, param


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = param(0.5, "migration strength: s_j = max|X_j|^α / max|W_j|^(1−α)", ge=0, le=1)
    smooth: bool = param(True, "migrate activation outliers into the weights; false: plain W8A8 (the paper's baseline)",
                         choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)


@register_method("smoothquant", config=SmoothQuantConfig, family="quantization", produces="quantized", calibration=True,
                 accepts={"dense", "masked", "sliced"})
class SmoothQuant(MethodBase):
    def check(self, adapter) -> None:
        if not adapter.norm_feeds or adapter.transposed_weights:
            raise ConfigError(f"smoothquant needs pre-norms feeding the linears (the adapter's norm_feeds) and [out, in] weights; "
                              f"the {adapter.family} adapter has {'transposed weights' if adapter.norm_feeds else 'no norm_feeds'}")

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        adapter, model = bundle.adapter, bundle.model
        feeds = adapter.norm_feeds
        roles = tuple(group[0] for group in feeds.values())  # one role per shared input
        stats = None  # plain W8A8 (smooth=false) needs no activation statistics
        if self.config.smooth:
            stats = CalibrationEngine(bundle, calib).collect(lambda i, b: {"x": LinearInputs(roles, {"abs_max"})}, cache_key="smoothquant:abs_max:" + ",".join(roles), desc="smoothquant")
        smoothing, layers = {}, []
        for i, block in enumerate(adapter.get_blocks(model)):
            if self.config.smooth:
                smoothing[i] = self._smooth_block(adapter, block, stats[i]["x"], feeds)
            for role, module in adapter.block_linears(block).items():
                weight, bias = adapter.weight_matrix(module), getattr(module, "bias", None)
                set_path(block, adapter.role_path(role), QuantLinear.w8a8_from_float(weight.detach().float(), None if bias is None else bias.detach()))
                layers.append(LayerReport(adapter.layer_name(i, role), role, "quantized", bits=8, group_size=-1, path="int8-kernel",
                                          extra={"layout": "w8a8", "activations": "int8 per token"}))
        details = {"alpha": self.config.alpha, "smoothing_scale_range": smoothing, "weights": "int8 per-channel symmetric", "activations": "int8 per-token dynamic"}
        return MethodResult(execution_path="int8-kernel", details=details, notes=["W8A8 matmuls by torch._int_mm (int8×int8→int32); attention BMMs stay float"], layers=layers)

    def _smooth_block(self, adapter, block, inputs, feeds) -> dict:
        linears, out = adapter.block_linears(block), {}
        for norm_role, roles in feeds.items():
            group = [linears[r] for r in roles if r in linears]
            act = inputs[roles[0]].abs_max.float()  # [K] max |x_j|
            w_max = torch.stack([adapter.weight_matrix(m).abs().amax(dim=0) for m in group]).amax(dim=0).clamp(min=1e-5)
            s = (act.pow(self.config.alpha) / w_max.pow(1 - self.config.alpha)).clamp(min=1e-5)  # [K]
            adapter.scale_norm_output(adapter.norm(block, norm_role), 1 / s)
            for m in group:
                adapter.weight_matrix(m).mul_(s[None, :])
            out[norm_role] = [round(float(s.min()), 6), round(float(s.max()), 6)]
        return out
