"""GPTQ: accurate post-training quantization (Frantar et al., ICLR 2023, arXiv 2210.17323;
reference IST-DASLab/gptq 2d65066: gptq.py ``fasterquant``, quant.py, llama.py).

Per block, for each group of linears sharing an input (true-sequential order of llama.py:
q/k/v, then o, then gate/up, then down; each group observes the block with the earlier groups
already quantized), with H = 2/n Σ xxᵀ of the layer input (n calibration samples; accumulated as
the reference's running mean, bitwise equal to its ``add_batch``: ``InputStats.hessian``):
  1. dead inputs: H_jj = 1, W[:, j] = 0; act-order: permute columns by descending diag H;
  2. H += 0.01 · mean(diag H) · I; U = upper Cholesky factor of H⁻¹;
  3. for column blocks of 128: for each column i, (at a group start) fit the min-max grid
     of the group, q_i = quant(w_i), err = (w_i − q_i)/U_ii, W[:, i:] −= err · U[i, i:] inside
     the block; after the block, W[:, i2:] −= Err · U[i1:i2, i2:] (lazy batch update);
  4. the block's outputs are recomputed with quantized weights for the next block.
Groups: without static groups the grid of a group is fitted when the loop reaches its first
column, on the *outer* W (which holds the lazy updates of earlier blocks but not the in-block
updates: the reference's behaviour when the group size is smaller than the 128-column block).
Static groups fit all grids on the un-updated W before the loop. A last partial group (K not a
multiple of the group size) is fitted on its remaining columns, as the reference does.
act-order with groups requires static groups here: without them the reference's groups follow
the permuted column order and a packed format would need a per-column group index.
``preserve_zeros`` (for pipelines after pruning, as llm-compressor's GPTQ): weights that are exactly
zero before quantization stay zero (their quantized value is forced to 0, which every grid here
represents exactly, and the difference is propagated like any quantization error), so the
sparsity of an earlier pruning stage survives. Its default (null) resolves per run: true when an
earlier pipeline stage left pruned zeros (form ``masked``), false otherwise, as the reference,
which quantizes exact zeros like any weight (SmolLM2's dequantized GGUF weights hold 33,483 of
them: with true, slimbench's GPTQ is not the reference's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from slimbench.calibration import LinearInputs, Step
from slimbench.errors import ConfigError
from slimbench.kernels.qlinear import num_groups
from slimbench.methods.base import MethodBase, MethodResult, SequentialPlan, register_method
from slimbench.methods.hessian import dampen, inverse_cholesky_upper, mark_dead_inputs
from slimbench.methods.quant.common import (
    QUANT_ACCEPTS, SYM_DOC, Quantized, bits_param, from_codes, group_param, group_slices, install, layer_report, minmax_params, summarize,
    to_codes,
)
from slimbench.params import check_params, param


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = bits_param(4)
    group_size: int = group_param(128)
    sym: bool = param(False, SYM_DOC, choices=(True, False))
    act_order: bool = param(False, "quantize columns in order of decreasing Hessian diagonal", choices=(True, False))
    static_groups: bool = param(False, "groups' grids fixed before the column loop (needed with act_order and groups)",
                                choices=(True, False))
    true_sequential: bool = param(True, "quantize q,k,v | o | gate,up | down in turn, each on the inputs the earlier ones produce",
                                  choices=(True, False))
    percdamp: float = param(0.01, "dampening of H as a fraction of mean(diag H)", ge=0, lt=1)
    blocksize: int = param(128, "columns per lazy-update block", ge=1)
    propagate_error: bool = param(True, "the next block sees the quantized block's outputs", choices=(True, False))
    preserve_zeros: bool | None = param(None, "exact zeros stay zero; null = true after a pruning stage, false otherwise "
                                        "(the reference quantizes zeros like any weight)", choices=(True, False), nullable=True)

    def __post_init__(self) -> None:
        check_params(self)
        if self.act_order and self.group_size > 0 and not self.static_groups:
            raise ConfigError("act_order with group_size > 0 needs static_groups=true (packed groups must be contiguous columns)")


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig) -> tuple[Quantized, float]:
    """Quantize w [N, K] with Hessian h [K, K]; returns the codes and the reference's loss."""
    w, h = w.detach().float().clone(), h.clone()
    n, k = w.shape
    keep = (w != 0) if cfg.preserve_zeros and not bool((w != 0).all()) else None  # [N, K] False = a zero to preserve
    row_grid = [minmax_params(w, cfg.bits, cfg.sym)] if cfg.group_size <= 0 else None  # before dead columns are zeroed, as the reference
    h, dead = mark_dead_inputs(h)
    w[:, dead] = 0
    static = [minmax_params(w[:, c], cfg.bits, cfg.sym) for c in group_slices(k, cfg.group_size)] if cfg.static_groups and cfg.group_size > 0 else None
    grids = row_grid or static
    perm = torch.argsort(torch.diag(h), descending=True) if cfg.act_order else torch.arange(k, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    keep = None if keep is None else keep[:, perm]
    hinv = inverse_cholesky_upper(dampen(h, cfg.percdamp))

    group_of = (perm // max(cfg.group_size, 1)).tolist()  # static groups: column -> group, on the host once (no sync per column)
    codes = torch.zeros(n, k, dtype=torch.int32, device=w.device)
    scales = torch.zeros(n, num_groups(k, cfg.group_size), device=w.device)
    zeros = torch.zeros_like(scales)
    if grids is not None:
        scales, zeros = torch.stack([g[0] for g in grids], 1), torch.stack([g[1] for g in grids], 1)
    scale, zero = scales[:, 0], zeros[:, 0]
    loss = torch.zeros((), dtype=torch.float64, device=w.device)  # on the device: no host sync per column
    for i1 in range(0, k, cfg.blocksize):
        i2 = min(i1 + cfg.blocksize, k)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if cfg.group_size > 0:
                if static is not None:
                    g = group_of[col]
                    scale, zero = scales[:, g], zeros[:, g]
                elif col % cfg.group_size == 0:
                    g = col // cfg.group_size
                    scale, zero = minmax_params(w[:, col : col + cfg.group_size], cfg.bits, cfg.sym)
                    scales[:, g], zeros[:, g] = scale, zero
            col_w, d = w1[:, i], hinv1[i, i]
            q = to_codes(col_w[:, None], scale, zero, cfg.bits)[:, 0]  # [N]
            if keep is not None:  # a preserved zero takes the zero point's code: dequantizes to exactly 0
                q = torch.where(keep[:, col], q, zero.round().to(q.dtype))
            col_q = from_codes(q[:, None], scale, zero)[:, 0]
            codes[:, col] = q
            loss += (((col_w - col_q) ** 2).sum() / d**2).double() / 2
            err = (col_w - col_q) / d
            w1[:, i:] -= err[:, None] @ hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    return Quantized(codes, scales, zeros, cfg.bits, cfg.group_size), float(loss)


@register_method("gptq", config=GPTQConfig, family="quantization", produces="quantized", calibration=True, accepts=QUANT_ACCEPTS)
class GPTQ(MethodBase):
    def after(self, forms: frozenset) -> "GPTQ":
        if self.config.preserve_zeros is not None:
            return self
        return type(self)(replace(self.config, preserve_zeros="masked" in forms))

    def plan(self, bundle, calib) -> SequentialPlan:
        adapter, layers = bundle.adapter, []

        def steps(i, block):
            linears = adapter.block_linears(block)
            return [Step({"x": LinearInputs(group, {"hessian"})}, compress=self._compress_fn(adapter, block, i, group, layers))
                    for group in adapter.observation_groups(list(linears), self.config.true_sequential)]

        def finish(report) -> MethodResult:
            path, details, notes = summarize(layers)
            details["calibration_tokens"] = report.samples * report.tokens_per_sample
            return MethodResult(execution_path=path, details=details, notes=notes, layers=layers)

        return SequentialPlan(steps, finish, propagate_error=self.config.propagate_error, desc="gptq")

    def _compress_fn(self, adapter, block, index, roles, layers):
        @torch.no_grad()
        def compress(stats):
            linears = adapter.block_linears(block)
            for role in roles:
                module, path = linears[role], adapter.role_path(role)
                q, loss = gptq_quantize(adapter.weight_matrix(module), stats["x"][role].hessian, self.config)
                layers.append(layer_report(adapter.layer_name(index, role), role, q, install(block, path, module, q), round(loss, 6), "gptq loss"))
            return None

        return compress
