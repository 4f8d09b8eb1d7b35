"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024, arXiv 2306.00978;
reference mit-han-lab/llm-awq d6e797a: awq/quantize/auto_scale.py, auto_clip.py, quantizer.py,
pre_quant.py ``run_awq``).

Per block, from the inputs of the *unquantized* model (the reference computes the next block's
input from the original block, so no quantization error is propagated):
  1. scale search, for each (previous op -> linears, inspected module) of a decoder block (the
     adapter's ``scale_chains``; for Llama-style blocks): attn_in norm -> q,k,v (inspect
     attention); v -> o (only without GQA, where v's rows match o's inputs);
     mlp_in norm -> gate,up (inspect MLP); up -> down (inspect down). With x̄ = mean |x| over
     the calibration tokens, for α in {0, 1/20, ..., 19/20}: s = max(x̄^α, 1e-4),
     s /= sqrt(max s · min s); W ← Q(W·diag(s))·diag(s)⁻¹; loss = mean (y − y_α)² of the
     inspected module's output; keep the best s, fold 1/s into the previous op (norm weight or
     the previous linear's output rows) and s into the linears' input columns;
  2. clipping search for every linear but q and k, on the scaled inputs of 512 tokens (every
     ⌊n/512⌋-th calibration token): per output row and group, max_val = max|w|·(1 − i/20) for
     i in 0..9 (the reference's n_grid=20, max_shrink=0.5: ten steps, 100% down to 55%),
     keep the one minimizing the mean squared group output error of the quantized weights;
     clamp W to ±max_val;
  3. quantize with AWQ's grid (plain min-max per group with zero point, ``include_zero=False``
     in ``common.minmax_params``) and store packed.
Defaults: INT4, group 128 (64 is the comparable setting on SmolLM2, whose hidden size 576 is not
a multiple of 128). llm-awq asserts that K is a multiple of the group size; here a last partial
group is quantized with its own scale/zero (as in RTN/GPTQ) and the record says so.
Calibration: the reference uses Pile-val 128 × 512; offline this uses the configured set
(WikiText-2 validation; set calib.seqlen=512 for the reference's window length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimbench.hooks import FunctionHook

from slimbench.calibration import Step
from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, SequentialPlan, register_method
from slimbench.methods.quant.common import bits_param, group_param, group_slices, install, layer_report, rtn, summarize
from slimbench.models.adapters import get_path
from slimbench.params import check_params, param

NO_CLIP_ROLES = ("q", "k")  # "due to qk bmm, it is hard to clip precisely"


@dataclass(frozen=True)
class AWQConfig:
    bits: int = bits_param(4)
    group_size: int = group_param(128)
    n_grid: int = param(20, "points of the scale search s = mean|x|^α, α in [0, 1)", ge=1)
    auto_scale: bool = param(True, "search per-channel scales (activation-aware)", choices=(True, False))
    auto_clip: bool = param(True, "search a clipping range per group", choices=(True, False))
    clip_max_shrink: float = param(0.5, "the clipping search shrinks the range by at most this fraction", ge=0, lt=1)
    clip_tokens: int = param(512, "calibration tokens the clipping search uses", ge=1)

    def __post_init__(self) -> None:
        check_params(self)


class _BlockRecorder:
    """Records, per calibration sample, the calls of the modules AWQ's search replays: the
    inspected sublayers/linears of the adapter's scale chains and the inputs of every linear
    that follows another linear (v -> o, up -> down)."""

    def __init__(self, targets: dict[str, nn.Module]) -> None:
        self.targets = targets
        self.calls: dict[str, list] = {key: [] for key in targets}

    def attach(self, block, adapter, hooks) -> None:
        for key, module in self.targets.items():
            hooks.add(f"awq/{id(self)}/{key}", module, FunctionHook(pre=self._observer(key)))

    def _observer(self, key):
        def observe(module, args, kwargs):
            self.calls[key].append((args, dict(kwargs)))

        return observe

    def result(self) -> dict[str, list]:
        return self.calls


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _call(module: nn.Module, args, kwargs, x: torch.Tensor) -> torch.Tensor:
    """Replay a recorded call with the hidden-state input replaced by ``x``."""
    if args:
        out = module(x, *args[1:], **kwargs)
    else:
        out = module(**{**kwargs, "hidden_states": x})
    return out[0] if isinstance(out, tuple) else out


def awq_quantize_weight(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """AWQ's pseudo-quantization: per-group plain min-max with zero point."""
    return rtn(w, bits, group_size, sym=False, include_zero=False).dequantize()


@register_method("awq", config=AWQConfig, family="quantization", produces="quantized", calibration=True,
                 accepts={"dense", "masked", "sliced"})
class AWQ(MethodBase):
    def check(self, adapter) -> None:
        roles = {r for c in adapter.scale_chains for r in (*c.roles, c.prev, c.inspect)}
        missing = sorted(r for r in roles if r not in adapter.linears and r not in adapter.norms and getattr(adapter, r, None) is None)
        if not adapter.scale_chains or missing or adapter.transposed_weights:
            raise ConfigError(f"awq needs the adapter's scale chains (pre-norm -> linears) and [out, in] weights; "
                              f"the {adapter.family} adapter has {missing or 'no scale chains'}")

    def plan(self, bundle, calib) -> SequentialPlan:
        adapter, layers, searched = bundle.adapter, [], {}
        chains = adapter.chains(bundle.model.config)

        def steps(i, block):
            rec = _BlockRecorder(self._targets(adapter, block, chains))

            @torch.no_grad()
            def compress(stats):
                searched[i] = self._block(adapter, block, chains, stats["rec"])
                for role, module in adapter.block_linears(block).items():
                    q = rtn(adapter.weight_matrix(module), self.config.bits, self.config.group_size, sym=False, include_zero=False)
                    layers.append(layer_report(adapter.layer_name(i, role), role, q, install(block, adapter.role_path(role), module, q)))

            return [Step({"rec": rec}, compress=compress)]

        def finish(report) -> MethodResult:
            path, details, notes = summarize(layers)
            details["search"] = searched
            notes.append("activation statistics from the unquantized model (no error propagation), as the reference")
            return MethodResult(execution_path=path, details=details, notes=notes, layers=layers)

        return SequentialPlan(steps, finish, propagate_error=False, desc="awq")

    @staticmethod
    def _module(adapter, block, name: str) -> nn.Module:
        """A chain's inspected module: a sublayer (``attn``/``mlp``) or a linear role."""
        return get_path(block, adapter.role_path(name) if name in adapter.linears else getattr(adapter, name))

    @staticmethod
    def _norm_fed(adapter, chains) -> dict[str, str]:
        """Linear role -> the sublayer whose (normed) input it reads, for the norm-fed linears."""
        return {r: c.inspect for c in chains if c.prev in adapter.norms for r in c.roles}

    def _targets(self, adapter, block, chains) -> dict[str, nn.Module]:
        """What to record: the inspected sublayers and the input of every linear not fed by a norm."""
        fed = self._norm_fed(adapter, chains)
        targets = {c.inspect: self._module(adapter, block, c.inspect) for c in chains if c.inspect not in adapter.linears}
        targets.update({r: m for r, m in adapter.block_linears(block).items() if r not in fed})
        return targets

    # -- one block -------------------------------------------------------------------------------
    def _block(self, adapter, block, chains, calls) -> dict:
        cfg, lin = self.config, adapter.block_linears(block)
        hidden = {key: [_hidden(a, k) for a, k in c] for key, c in calls.items()}  # per sample [1, T, D]
        fed = self._norm_fed(adapter, chains)
        inputs = {r: hidden[fed.get(r, r)] for r in lin}  # what each linear reads
        record: dict = {}
        if cfg.auto_scale:  # all searches on the untouched block, then all scales applied (as the reference)
            found = []
            for c in chains:
                module = self._module(adapter, block, c.inspect)
                if c.inspect in adapter.linears:
                    inspect = lambda x, j, m=module: m(x)  # noqa: E731
                else:
                    inspect = lambda x, j, m=module, key=c.inspect: _call(m, *calls[key][j], x)  # noqa: E731
                found.append((c, *self._search_scale([lin[r] for r in c.roles], inspect, inputs[c.roles[0]], adapter)))
            for c, s, ratio in found:
                self._apply_scale(adapter, block, c.prev, [lin[r] for r in c.roles], s)
                scaled = [x / s for x in inputs[c.roles[0]]]  # the clipping search sees the scaled inputs
                inputs.update({r: scaled for r in c.roles})
                record[f"{c.prev}->{','.join(c.roles)}"] = ratio
        if cfg.auto_clip:
            for role, module in lin.items():
                if role not in NO_CLIP_ROLES and role in inputs:
                    self._clip(adapter.weight_matrix(module), torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs[role]]))
        return record

    def _search_scale(self, linears, inspect, xs, adapter) -> tuple[torch.Tensor, float]:
        cfg = self.config
        x_mean = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).abs().mean(0)  # [C] mean |x|
        original = [adapter.weight_matrix(m).clone() for m in linears]
        ref = [inspect(x, j) for j, x in enumerate(xs)]
        best = (float("inf"), None, -1.0)
        for step in range(cfg.n_grid):
            ratio = step / cfg.n_grid
            s = x_mean.pow(ratio).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for m, w in zip(linears, original):
                adapter.weight_matrix(m).copy_(awq_quantize_weight(w * s, cfg.bits, cfg.group_size) / s)
            err = sum(float((inspect(x, j) - r).float().pow(2).sum()) for j, (x, r) in enumerate(zip(xs, ref)))
            loss = err / sum(r.numel() for r in ref)
            if loss < best[0]:
                best = (loss, s.clone(), ratio)
        for m, w in zip(linears, original):
            adapter.weight_matrix(m).copy_(w)
        if best[1] is None:
            raise RuntimeError("AWQ scale search found no finite loss")
        return best[1], best[2]

    @staticmethod
    def _apply_scale(adapter, block, prev: str, linears, s: torch.Tensor) -> None:
        if prev in adapter.norms:
            adapter.scale_norm_output(adapter.norm(block, prev), 1 / s)
        else:  # a linear: its last len(s) output rows (and bias) divided by s
            w = adapter.weight_matrix(adapter.block_linears(block)[prev])
            w[-s.numel():].div_(s[:, None])
            bias = getattr(adapter.block_linears(block)[prev], "bias", None)
            if bias is not None:
                bias.div_(s)
        for m in linears:
            adapter.weight_matrix(m).mul_(s[None, :])

    def _clip(self, w: torch.Tensor, x: torch.Tensor) -> None:
        """In place: clamp each output row's group to the searched ±max_val. w [N, K], x [T, K]."""
        cfg = self.config
        x = x[:: max(1, x.shape[0] // cfg.clip_tokens)]  # [~512, K]
        for cols in group_slices(w.shape[1], cfg.group_size):
            wg, xg = w[:, cols].float(), x[:, cols].float()
            org_out = xg @ wg.t()  # [T, N]
            org_max = wg.abs().amax(dim=1, keepdim=True)  # [N, 1]
            best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
            best_max = org_max.clone()
            for i in range(int(cfg.clip_max_shrink * cfg.n_grid)):
                max_val = org_max * (1 - i / cfg.n_grid)
                q = awq_quantize_weight(torch.clamp(wg, -max_val, max_val), cfg.bits, -1)
                err = (xg @ q.t() - org_out).pow(2).mean(0)  # [N]
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_max = torch.where(better[:, None], max_val, best_max)
            w[:, cols] = torch.clamp(wg, -best_max, best_max).to(w.dtype)
