"""SparseGPT: massive language models can be accurately pruned in one shot (Frantar &
Alistarh, ICML 2023, arXiv 2301.00774; reference IST-DASLab/sparsegpt @ 147d215,
``sparsegpt.py::SparseGPT.fasterprune`` driven by ``llama.py::llama_sequential``).

Calibration (engine, ``propagate_error=True``): per block, one pass over the calibration
samples observes the inputs of *all* the block's linears at once (the reference's default;
``true_sequential=true`` instead observes and prunes one input group at a time: q/k/v, o,
gate/up, down, each seeing the already pruned earlier groups); then every linear is pruned
and the pruned block is re-run to produce the next block's inputs.

Per linear, W [out, in] in float32 (as the reference):
  1. H = 2/n · Σ x xᵀ over the n calibration samples, accumulated as the reference's running mean
     (``InputStats.hessian``, bitwise equal to its ``add_batch``; ``slimbench.methods.hessian``); dead
     inputs (H_ii = 0) get H_ii = 1 and their weight column zeroed; H += 0.01·mean(diag H)·I;
     U = upper Cholesky factor of H⁻¹.
  2. Columns in blocks of ``blocksize`` (128) with lazy batch updates. Unstructured: at the
     start of each block, with the block's current (already updated) weights W1,
     score = W1² / diag(U_block)², threshold = the element at index ⌊sparsity · numel⌋ of the
     sorted scores, mask = score ≤ threshold (as the reference: ⌊sparsity · numel⌋ + 1
     weights per block when there are no ties). N:M: at every column i with i % M == 0,
     in each row zero the N lowest scores of columns i..i+M−1 (current weights).
  3. For each column i of the block: q = w with masked entries zeroed,
     err = (w − q) / U_ii, W1[:, i:] −= err · U[i, i:]; after the block,
     W[:, end:] −= Err · U[block, end:] (the lazy update of the remaining columns).
  The per-layer ``obs_error`` reported is the reference's printed error, Σ (w − q)² / U_ii² / 2.

``sparsity = 0`` with an unstructured pattern changes nothing: the reference driver skips
pruning entirely then (``if args.sparsity or args.prunen``), whereas its ``≤ threshold`` mask
would otherwise remove the smallest score of every block.

Execution path: masked-dense (zeros stored in dense tensors, no speedup expected).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.calibration import LinearInputs, Step
from slimbench.errors import ConfigError
from slimbench.methods.base import LayerReport, MethodBase, MethodResult, SequentialPlan, register_method
from slimbench.methods.hessian import prepare_inverse
from slimbench.methods.pruning.masks import PATTERN_DOC, check_sparsity, parse_pattern
from slimbench.params import check_params, param


@dataclass(frozen=True)
class SparseGPTConfig:
    sparsity: float = param(0.5, "fraction of weights removed per 128-column block", ge=0, lt=1)
    pattern: str = param("unstructured", PATTERN_DOC)
    blocksize: int = param(128, "columns per lazy-update block", ge=1)
    percdamp: float = param(0.01, "dampening as a fraction of mean(diag H)", gt=0, le=1)
    true_sequential: bool = param(False, "observe/prune q,k,v | o | gate,up | down in turn", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)
        check_sparsity(self.sparsity, self.pattern)
        nm = parse_pattern(self.pattern)
        if nm is not None and self.blocksize % nm[1]:
            raise ConfigError(f"blocksize {self.blocksize} must be a multiple of M={nm[1]} for pattern {self.pattern}")


def block_mask(w1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference's unstructured mask of one column block: w1 [out, B], d = diag(U_block) [B]."""
    score = w1**2 / d.reshape(1, -1) ** 2
    thresh = torch.sort(score.flatten()).values[int(score.numel() * sparsity)]
    return score <= thresh


def sparsegpt_prune(
    weight: torch.Tensor, hinv: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` [out, in] given U = chol(H⁻¹) upper [in, in]; returns (W', loss per row)."""
    w = weight.float().clone()
    rows, cols = w.shape
    if nm is not None and cols % nm[1]:
        raise ConfigError(f"{nm[0]}:{nm[1]} sparsity needs in_features divisible by {nm[1]}, got {cols}")
    losses = torch.zeros(rows, dtype=w.dtype, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        q1, err1, loss = _prune_block(w[:, i1:i2].clone(), hinv[i1:i2, i1:i2], sparsity, nm)
        w[:, i1:i2] = q1
        losses += loss
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the later columns
    return w, losses


def _prune_block(w1, hinv1, sparsity, nm):
    """One column block: (pruned block [out, B], scaled errors [out, B], loss per row [out])."""
    d = torch.diag(hinv1)  # [B]
    mask1 = block_mask(w1, d, sparsity) if nm is None else torch.zeros_like(w1, dtype=torch.bool)
    q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
    loss = torch.zeros(w1.shape[0], dtype=w1.dtype, device=w1.device)
    for i in range(w1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            n, m = nm
            score = w1[:, i : i + m] ** 2 / d[i : i + m].reshape(1, -1) ** 2
            mask1.scatter_(1, i + torch.topk(score, n, dim=1, largest=False).indices, True)
        col = w1[:, i]
        q = col.masked_fill(mask1[:, i], 0.0)
        q1[:, i] = q
        loss += (col - q) ** 2 / d[i] ** 2 / 2
        err = (col - q) / d[i]
        w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)  # OBS update
        err1[:, i] = err
    return q1, err1, loss


@register_method("sparsegpt", config=SparseGPTConfig, family="pruning", produces="masked", calibration=True)
class SparseGPT(MethodBase):
    def check(self, adapter) -> None:
        if not adapter.linears:
            raise ConfigError(f"sparsegpt: the {adapter.family} adapter declares no linear layers to prune")

    def plan(self, bundle, calib) -> SequentialPlan:
        cfg, adapter, nm = self.config, bundle.adapter, parse_pattern(self.config.pattern)
        layers: list[LayerReport] = []
        skip = nm is None and cfg.sparsity == 0  # the reference driver then prunes nothing at all

        def steps(i, block):
            if skip:
                return []
            linears = adapter.block_linears(block)
            return [Step({"in": LinearInputs(g, {"hessian"})}, self._compressor(adapter, linears, i, g, layers))
                    for g in adapter.observation_groups(tuple(linears), cfg.true_sequential)]

        def finish(report) -> MethodResult:
            notes = [f"{nm[0]}:{nm[1]} pattern stored dense: no sparse kernel is used" if nm else "unstructured zeros stored dense",
                     "weights updated by the OBS reconstruction (float32)"]
            details = {"pattern": cfg.pattern, "blocksize": cfg.blocksize, "percdamp": cfg.percdamp, "true_sequential": cfg.true_sequential,
                       "calibration": {"blocks": report.blocks, "samples": report.samples, "tokens_per_sample": report.tokens_per_sample,
                                       "propagate_error": True}}
            return MethodResult("masked-dense", details, ["sparsity 0: nothing pruned"] if skip else notes, layers)

        return SequentialPlan(steps, finish, propagate_error=True, desc="sparsegpt")

    def _compressor(self, adapter, linears, index, roles, layers):
        cfg, nm = self.config, parse_pattern(self.config.pattern)

        @torch.no_grad()
        def compress(stats):
            for role in roles:
                weight = adapter.weight_matrix(linears[role])  # [out, in]
                inputs = stats["in"][role]
                hinv, dead = prepare_inverse(inputs.hessian, cfg.percdamp)
                start = weight.float().masked_fill(dead.reshape(1, -1), 0.0)
                pruned, losses = sparsegpt_prune(start, hinv, cfg.sparsity, nm, cfg.blocksize)
                weight.copy_(pruned.to(weight.dtype))
                layers.append(LayerReport(adapter.layer_name(index, role), role, "pruned", error=float(losses.sum()),
                                          error_kind="obs error", extra={"dead_inputs": int(dead.sum())}))

        return compress
