"""Shared pieces of the low-rank methods: the rank rule, the factorizations, replacement.

Rank rule (SVD-LLM's convention, used by every method here): a ``keep`` fraction of a dense
[m, n] weight's parameters gives ``k = floor(keep · m·n / (m+n))``; the layer is factored only
when ``0 < k < m·n/(m+n)`` (two factors then hold fewer parameters and need fewer FLOPs than
the dense matrix), otherwise it stays dense. Config ratios are the fraction of parameters
*removed* (SVD-LLM's ``--ratio``), so ``keep = 1 − ratio``.

All decompositions run in float64 on the [out, in] weight and are cast back to the model's
dtype when the factors are installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from slimbench.kernels.factored import factorize, saves_parameters
from slimbench.records import LayerReport
from slimbench.params import param


def ratio_param(default: float = 0.2):
    return param(default, "fraction of the decoder linears' parameters removed (keep = 1 − ratio)", gt=0, lt=1)


def keep_rank(out_features: int, in_features: int, keep: float) -> int | None:
    """k = floor(keep·m·n/(m+n)), or None when that rank would not save parameters."""
    k = math.floor(keep * out_features * in_features / (out_features + in_features))
    return k if saves_parameters(out_features, in_features, k) else None


@dataclass
class Target:
    """One decoder linear: its full name, block index, role and module."""

    name: str
    block: int
    role: str
    path: str  # inside the block
    module: nn.Module
    out: int  # rows of the [out, in] weight
    inp: int

    @property
    def numel(self) -> int:
        return self.out * self.inp


def decoder_linears(model: nn.Module, adapter) -> list[Target]:
    out = []
    for i, block in enumerate(adapter.get_blocks(model)):
        for role, module in adapter.block_linears(block).items():
            rows, cols = adapter.weight_matrix(module).shape
            out.append(Target(adapter.layer_name(i, role), i, role, adapter.role_path(role), module, rows, cols))
    return out


def weight64(adapter, module: nn.Module) -> torch.Tensor:
    return adapter.weight_matrix(module).detach().double()  # [out, in]


def truncated_factors(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k SVD of ``w`` [out, in] as (U_k √Σ_k [out, k], √Σ_k V_kᵀ [k, in])."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:k].sqrt()
    return u[:, :k] * root, root[:, None] * vh[:k]


def column_scaled_factors(w: torch.Tensor, k: int, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of W·diag(scale), then the right factor ← right · diag(scale)⁻¹ (ASVD, FWSVD)."""
    left, right = truncated_factors(w * scale[None, :], k)
    return left, right / scale[None, :]


def whitened_factors(w: torch.Tensor, k: int, chol: torch.Tensor, chol_inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of W·S, then the right factor ← right · S⁻¹ (SVD-LLM truncation-aware whitening)."""
    left, right = truncated_factors(w @ chol, k)
    return left, right @ chol_inv


def install(model: nn.Module, adapter, target: Target, left: torch.Tensor, right: torch.Tensor) -> None:
    """Replace ``target`` by the two factors; the bias moves to the second factor."""
    bias = getattr(target.module, "bias", None)
    block = adapter.get_blocks(model)[target.block]
    factorize(block, target.path, left, right, None if bias is None else bias.detach())


def factored_report(target: Target, k: int, **extra) -> LayerReport:
    return LayerReport(target.name, target.role, "factored", rank=k, path="low-rank", extra=extra)


def compress_uniform(model, adapter, keep: float, factors) -> tuple[list[LayerReport], list]:
    """Factor every decoder linear at ``keep`` with ``factors(target, w64, k)``.

    Returns (reports of the factored layers, names of layers left dense)."""
    layers, dense = [], []
    for target in decoder_linears(model, adapter):
        w = weight64(adapter, target.module)  # [out, in]
        k = keep_rank(*w.shape, keep)
        if k is None:
            dense.append(target.name)
            continue
        left, right = factors(target, w, k)
        install(model, adapter, target, left, right)
        layers.append(factored_report(target, k))
    return layers, dense


def details(keep: float, dense: list, **extra) -> dict:
    return {"keep_ratio": keep, "rank_rule": "k = floor(keep*m*n/(m+n)), factored only if k < m*n/(m+n)",
            "dense_layers": dense, **extra}
