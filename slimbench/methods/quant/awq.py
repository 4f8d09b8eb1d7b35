"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024, arXiv 2306.00978;
reference mit-han-lab/llm-awq d6e797a: awq/quantize/auto_scale.py, auto_clip.py, quantizer.py,
pre_quant.py ``run_awq``).

Per block, from the inputs of the *unquantized* model (the reference computes the next block's
input from the original block, so no quantization error is propagated):
  1. scale search, for each (previous op -> linears, inspected module) of a decoder block:
     attn_in norm -> q,k,v (inspect attention); v -> o (only when shapes match, i.e. no GQA);
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

from slimbench.calibration import CalibrationEngine, Step
from slimbench.errors import ConfigError
from slimbench.methods.base import METHODS, MethodResult
from slimbench.methods.quant.common import check_format, group_slices, install, layer_record, rtn, summarize
from slimbench.models.adapters import get_path

REQUIRED_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
NO_CLIP_ROLES = ("q", "k")  # "due to qk bmm, it is hard to clip precisely"


@dataclass(frozen=True)
class AWQConfig:
    bits: int = 4
    group_size: int = 128
    n_grid: int = 20
    auto_scale: bool = True
    auto_clip: bool = True
    clip_max_shrink: float = 0.5
    clip_tokens: int = 512

    def __post_init__(self) -> None:
        check_format(self.bits, self.group_size)
        if self.n_grid < 1 or self.clip_tokens < 1:
            raise ConfigError("n_grid and clip_tokens must be >= 1")
        if not 0 <= self.clip_max_shrink < 1:
            raise ConfigError(f"clip_max_shrink must be in [0, 1), got {self.clip_max_shrink}")


class _BlockRecorder:
    """Records, per calibration sample, the calls of the attention and MLP modules and the
    inputs of the o/down linears (what AWQ's search replays)."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.calls: dict[str, list] = {"attn": [], "mlp": [], "o": [], "down": []}

    def attach(self, block, adapter) -> list:
        linears = adapter.block_linears(block)
        targets = {"attn": get_path(block, adapter.attn), "mlp": get_path(block, adapter.mlp), "o": linears["o"], "down": linears["down"]}
        return [m.register_forward_pre_hook(self._hook(key), with_kwargs=True) for key, m in targets.items()]

    def _hook(self, key):
        def hook(module, args, kwargs):
            self.calls[key].append((args, dict(kwargs)))

        return hook

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


@METHODS.register("awq")
class AWQ:
    name = "awq"
    Config = AWQConfig
    requires_calibration = True
    kinds = ("causal_lm",)

    def __init__(self, config: AWQConfig) -> None:
        self.config = config

    def check(self, adapter) -> None:
        missing = [r for r in REQUIRED_ROLES if r not in adapter.linears]
        norms = [n for n in ("attn_in", "mlp_in") if n not in adapter.norms]
        if missing or norms or adapter.attn is None or adapter.mlp is None or adapter.transposed_weights:
            raise ConfigError(f"awq supports gated-MLP decoders with pre-norms (llama, gemma3 families); {adapter.family} lacks {missing + norms or 'a supported layout'}")

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        adapter, layers, searched = bundle.adapter, {}, {}

        def plan(i, block):
            rec = _BlockRecorder(adapter)

            def compress(stats):
                searched[i] = self._block(adapter, block, stats["rec"])
                for role, module in adapter.block_linears(block).items():
                    q = rtn(adapter.weight_matrix(module), self.config.bits, self.config.group_size, sym=False, include_zero=False)
                    layers[f"{adapter.blocks}.{i}.{adapter.linears[role]}"] = layer_record(q, install(block, adapter.linears[role], module, q))

            return [Step({"rec": rec}, compress=compress)]

        CalibrationEngine(bundle, calib).run(plan, propagate_error=False, desc="awq")
        path, details, notes = summarize(layers)
        details["search"] = searched
        notes.append("activation statistics from the unquantized model (no error propagation), as the reference")
        return MethodResult(execution_path=path, details=details, notes=notes)

    # -- one block -------------------------------------------------------------------------------
    def _block(self, adapter, block, calls) -> dict:
        cfg, lin = self.config, adapter.block_linears(block)
        attn, mlp = get_path(block, adapter.attn), get_path(block, adapter.mlp)
        x_attn = [_hidden(a, k) for a, k in calls["attn"]]  # per sample [1, T, D]
        x_mlp = [_hidden(a, k) for a, k in calls["mlp"]]
        x_o = [_hidden(a, k) for a, k in calls["o"]]
        x_down = [_hidden(a, k) for a, k in calls["down"]]
        inputs = {"q": x_attn, "k": x_attn, "v": x_attn, "o": x_o, "gate": x_mlp, "up": x_mlp, "down": x_down}
        record: dict = {}
        if cfg.auto_scale:  # all searches on the untouched block, then all scales applied (as the reference)
            groups = [("attn_in", ("q", "k", "v"), lambda x, j: _call(attn, *calls["attn"][j], x), x_attn)]
            if lin["v"].weight.shape == lin["o"].weight.shape:
                groups.append(("v", ("o",), lambda x, j: lin["o"](x), x_o))
            groups.append(("mlp_in", ("gate", "up"), lambda x, j: _call(mlp, *calls["mlp"][j], x), x_mlp))
            groups.append(("up", ("down",), lambda x, j: lin["down"](x), x_down))
            found = [(prev, roles, *self._search_scale([lin[r] for r in roles], inspect, xs, adapter)) for prev, roles, inspect, xs in groups]
            for prev, roles, s, ratio in found:
                self._apply_scale(adapter, block, prev, [lin[r] for r in roles], s)
                scaled = [x / s for x in inputs[roles[0]]]  # the clipping search sees the scaled inputs
                inputs.update({r: scaled for r in roles})
                record[f"{prev}->{','.join(roles)}"] = ratio
        if cfg.auto_clip:
            for role, module in lin.items():
                if role not in NO_CLIP_ROLES:
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
            best_err = torch.full((w.shape[0],), float("inf"))
            best_max = org_max.clone()
            for i in range(int(cfg.clip_max_shrink * cfg.n_grid)):
                max_val = org_max * (1 - i / cfg.n_grid)
                q = awq_quantize_weight(torch.clamp(wg, -max_val, max_val), cfg.bits, -1)
                err = (xg @ q.t() - org_out).pow(2).mean(0)  # [N]
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_max = torch.where(better[:, None], max_val, best_max)
            w[:, cols] = torch.clamp(wg, -best_max, best_max).to(w.dtype)
