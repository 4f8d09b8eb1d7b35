"""Mixed-precision weight quantization by Hessian-trace sensitivity (seed paper: Schaefer et
al. 2023, "Augmenting Hessians with Inter-Layer Dependencies for Mixed-Precision Post-Training
Quantization", arXiv 2306.04879; sensitivity in the HAWQ-V2 form, Dong et al. 2020).

1. From the unmodified model, per linear layer l with inputs x over n calibration tokens:
   the layer Hessian of the reconstruction loss H_l = 2/n Σ xxᵀ and its mean diagonal
   t_l = Tr(H_l) / K_l (only diag H is needed: 2/n Σ x_j²).
2. Sensitivity of quantizing l to b bits (HAWQ-V2's trace-weighted perturbation):
   Ω_l(b) = t_l · ‖W_l − Q_b(W_l)‖²_F with the min-max grid of ``group_size``.
3. Layers are ordered by the sensitivity increase per bit saved,
   (Ω_l(low) − Ω_l(high)) / (numel_l · (high − low)), least sensitive first; the first k
   layers get ``bits_low`` and the rest ``bits_high``. k is found by bisection as the
   smallest k whose weight-averaged bit width is ≤ ``target_bits`` (``budget=bits``, what the
   benchmark table fixes), or, as in the paper, the largest k whose model stays within an
   accuracy budget (``budget=ppl``): perplexity on the first ``budget_samples`` calibration
   windows ≤ (1 + ``ppl_budget``) × the unquantized model's. During that search each candidate
   is scored with its layers fake-quantized by RTN (the sensitivity's own quantizer; one
   forward pass per candidate, weights restored afterwards), assuming, as bisection does, that
   quality falls monotonically with k.
4. Each layer is quantized to its bit width by GPTQ (sequential, error propagation) or RTN.
Not implemented: the paper's inter-layer-dependency augmentation of the ranking (only the
Hessian-trace term is used; the paper's exact formulation is not available here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from slimbench.calibration import CalibrationEngine, LinearInputs, Step
from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.quant.common import QUANT_ACCEPTS, SYM_DOC, bits_param, group_param, install, layer_report, mean_bits, rtn, summarize
from slimbench.methods.quant.gptq import GPTQConfig, gptq_quantize
from slimbench.params import check_params, param


@dataclass(frozen=True)
class MixedPrecisionConfig:
    target_bits: float = param(3.5, "budget=bits: weight-averaged bit width of the block linears (scales excluded)", gt=0)
    bits_low: int = bits_param(3, "bit width of the least sensitive layers")
    bits_high: int = bits_param(4, "bit width of the other layers")
    group_size: int = group_param(128)
    quantizer: str = param("gptq", "how each layer is quantized at its bit width", choices=("gptq", "rtn"))
    sym: bool = param(False, SYM_DOC, choices=(True, False))
    budget: str = param("bits", "'bits': meet target_bits; 'ppl': stay within ppl_budget (the paper's criterion)", choices=("bits", "ppl"))
    ppl_budget: float = param(0.05, "budget=ppl: allowed relative perplexity increase over the unquantized model", gt=0)
    budget_samples: int = param(8, "budget=ppl: calibration windows the perplexity is measured on", ge=1)

    def __post_init__(self) -> None:
        check_params(self)
        if not self.bits_low < self.bits_high:
            raise ConfigError(f"bits_low must be < bits_high, got {self.bits_low} and {self.bits_high}")
        if not self.bits_low <= self.target_bits <= self.bits_high:
            raise ConfigError(f"target_bits must lie in [{self.bits_low}, {self.bits_high}], got {self.target_bits}")


def sensitivity(w: torch.Tensor, mean_diag_h: float, bits: int, group_size: int, sym: bool) -> float:
    """Ω(b) = mean diag(H) · ‖W − Q_b(W)‖²."""
    return mean_diag_h * float((w.float() - rtn(w, bits, group_size, sym).dequantize()).pow(2).sum())


def assign_bits(cost: dict[str, float], sizes: dict[str, int], low: int, high: int, target: float) -> tuple[dict[str, int], int]:
    """Bisection over k = number of least-sensitive layers at ``low`` bits. Returns (bits, k)."""
    order = sorted(cost, key=lambda n: (cost[n], n))
    total = sum(sizes.values())

    def mean_bits(k: int) -> float:
        lowered = sum(sizes[n] for n in order[:k])
        return (low * lowered + high * (total - lowered)) / total

    lo, hi = 0, len(order)  # mean_bits(hi) = low <= target
    while lo < hi:
        mid = (lo + hi) // 2
        if mean_bits(mid) <= target + 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return {n: (low if i < lo else high) for i, n in enumerate(order)}, lo


def largest_within_budget(n: int, within: Callable[[int], bool]) -> tuple[int, bool]:
    """Bisection for the largest k in [0, n] with ``within(k)`` (assumed monotone: true up to some
    k, false after). Returns (k, whether k = 0 itself was within the budget)."""
    if not within(0):
        return 0, False
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo, True


@register_method("mixed_precision", config=MixedPrecisionConfig, family="quantization", produces="quantized", calibration=True,
                 accepts=QUANT_ACCEPTS)
class MixedPrecision(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter = self.config, bundle.adapter
        engine = CalibrationEngine(bundle, calib)
        roles = tuple(adapter.linears)
        stats = engine.collect(lambda i, b: {"x": LinearInputs(list(adapter.block_linears(b)), {"sq_sum"})}, cache_key="sq_sum:" + ",".join(roles), desc="hessian trace")
        cost, sizes, traces = self._sensitivities(adapter, bundle.model, stats)
        search: dict = {}
        if cfg.budget == "bits":
            bits, k = assign_bits(cost, sizes, cfg.bits_low, cfg.bits_high, cfg.target_bits)
        else:
            bits, k, search = self._search_budget(bundle, engine, cost)
        layers = self._quantize(bundle, engine, bits)
        path, details, notes = summarize(layers)
        mean = mean_bits(bits, sizes)
        details.update({"budget": cfg.budget, "assigned_mean_bits": mean, "layers_low": k, "hessian_mean_diag": traces,
                        "sensitivity_per_bit": cost, **({"budget_search": search} if search else {})})
        notes.append(f"{k} of {len(bits)} linears at {cfg.bits_low} bits, the rest at {cfg.bits_high}: mean {mean:.3f} bits/weight before scales")
        if search and not search["met"]:
            notes.append(f"perplexity budget not met even with every linear at {cfg.bits_high} bits "
                         f"({search['ppl_all_high']:.4g} > {search['ppl_limit']:.4g}): all linears kept at {cfg.bits_high} bits")
        return MethodResult(execution_path=path, details=details, notes=notes, layers=layers)

    @torch.no_grad()
    def _search_budget(self, bundle, engine, cost) -> tuple[dict[str, int], int, dict]:
        """The paper's criterion: the most layers at ``bits_low`` whose RTN fake-quantized model keeps
        the calibration-window perplexity within (1 + ppl_budget) x the unquantized model's."""
        cfg, model = self.config, bundle.model
        order = sorted(cost, key=lambda n: (cost[n], n))
        modules = dict(model.named_modules())
        windows = list(engine.calib.samples(cfg.budget_samples))

        def perplexity() -> float:  # exp(mean over windows of the window's mean token NLL)
            return math.exp(float(engine.objective(windows).mean()))

        reference = perplexity()
        limit = (1 + cfg.ppl_budget) * reference
        originals = {name: bundle.adapter.weight_matrix(modules[name]).detach().clone() for name in order}  # restored after each try
        fake = {}  # name -> {bits: dequantized weight}, computed once per layer and width
        tried: dict[int, float] = {}

        def fake_weight(name, b):
            per = fake.setdefault(name, {})
            if b not in per:
                w = originals[name]
                per[b] = rtn(w, b, cfg.group_size, cfg.sym).dequantize().to(w.dtype)
            return per[b]

        def within(k: int) -> bool:
            try:
                for i, name in enumerate(order):
                    bundle.adapter.weight_matrix(modules[name]).copy_(fake_weight(name, cfg.bits_low if i < k else cfg.bits_high))
                tried[k] = perplexity()
            finally:
                for name, w0 in originals.items():
                    bundle.adapter.weight_matrix(modules[name]).copy_(w0)
            return tried[k] <= limit

        k, met = largest_within_budget(len(order), within)
        bits = {n: (cfg.bits_low if i < k else cfg.bits_high) for i, n in enumerate(order)}
        search = {"windows": len(windows), "ppl_unquantized": reference, "ppl_limit": limit, "ppl_all_high": tried[0],
                  "met": met, "tried": {str(kk): v for kk, v in sorted(tried.items())}, "search_quantizer": "rtn (fake-quant)"}
        return bits, k, search

    def _sensitivities(self, adapter, model, stats):
        cfg = self.config
        cost, sizes, traces = {}, {}, {}
        for i, block in enumerate(adapter.get_blocks(model)):
            for role, module in adapter.block_linears(block).items():
                name = adapter.layer_name(i, role)
                st = stats[i]["x"][role]
                t = float(2 * st.sq_sum.sum() / st.tokens) / st.sq_sum.numel()  # mean diag of H = 2/n Σ xxᵀ
                w = adapter.weight_matrix(module)
                drop = sensitivity(w, t, cfg.bits_low, cfg.group_size, cfg.sym) - sensitivity(w, t, cfg.bits_high, cfg.group_size, cfg.sym)
                sizes[name], traces[name] = w.numel(), round(t, 8)
                cost[name] = drop / (w.numel() * (cfg.bits_high - cfg.bits_low))
        return cost, sizes, traces

    def _quantize(self, bundle, engine, bits) -> list:
        cfg, adapter, layers = self.config, bundle.adapter, []

        def quantize(block, i, role, h):
            module, path = adapter.block_linears(block)[role], adapter.role_path(role)
            name = adapter.layer_name(i, role)
            w = adapter.weight_matrix(module)
            if h is None:
                q, loss = rtn(w, bits[name], cfg.group_size, cfg.sym), None
            else:
                q, loss = gptq_quantize(w, h, replace(GPTQConfig(group_size=cfg.group_size, sym=cfg.sym), bits=bits[name]))
            layers.append(layer_report(name, role, q, install(block, path, module, q), loss, "gptq loss"))

        if cfg.quantizer == "rtn":
            for i, block in enumerate(adapter.get_blocks(bundle.model)):
                for role in list(adapter.block_linears(block)):
                    quantize(block, i, role, None)
            return layers

        def plan(i, block):
            def step(group):
                return Step({"x": LinearInputs(group, {"hessian"})}, compress=lambda st: [quantize(block, i, r, st["x"][r].hessian) for r in group] and None)

            return [step(g) for g in adapter.observation_groups(list(adapter.block_linears(block)), True)]

        engine.run(plan, propagate_error=True, desc="mixed precision")
        return layers
