"""Layer Hessians of the OBS family (SparseGPT, GPTQ): the shared numerical conventions.

For a linear layer y = x Wᵀ with calibration inputs x (rows = tokens), the layer-wise
reconstruction loss ‖XWᵀ − XŴᵀ‖² has Hessian H = 2 XᵀX w.r.t. each weight row. The
references (IST-DASLab/sparsegpt, IST-DASLab/gptq) use

  * H = 2/n · Σ x xᵀ in float32 (the references average over the n calibration *sequences*;
    METHODS.md states it per token; every use below is invariant to a positive scale of H,
    because the dampening is relative and H⁻¹ enters only through ratios such as
    Hinv[i, j] / Hinv[i, i]);
  * dead inputs (diag H = 0, an input feature that is always zero) get H_ii = 1 and the
    caller zeroes their weight column (it never contributes on the calibration data);
  * dampening λ = percdamp · mean(diag H) added to the diagonal (percdamp = 0.01);
  * the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), computed as
    cholesky -> cholesky_inverse -> cholesky(upper=True). Row i of U, divided by U_ii,
    is the OBS update direction for eliminating column i given columns < i are fixed.

The helpers return new tensors and never change their arguments. GPTQ's act-order
permutation, when wanted, goes between ``mark_dead_inputs`` and ``dampen``.
"""

from __future__ import annotations

import torch


def hessian_from_gram(gram: torch.Tensor, count: int) -> torch.Tensor:
    """H = 2/count · Σ x xᵀ from the Gram matrix Σ x xᵀ [D, D] (float32 copy)."""
    if count <= 0:
        raise ValueError(f"Hessian needs a positive sample count, got {count}")
    return gram.float() * (2.0 / count)


def mark_dead_inputs(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H with H_ii = 1 where diag H = 0, bool mask of those dead inputs [D])."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    idx = dead.nonzero().flatten()
    h[idx, idx] = 1.0
    return h, dead


def dampen(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp · mean(diag H) · I."""
    h = hessian.clone()
    damp = percdamp * torch.mean(torch.diag(h))
    h.diagonal().add_(damp)
    return h


def inverse_cholesky_upper(hessian: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), as the references compute it."""
    try:
        lower = torch.linalg.cholesky(hessian)
        inverse = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise torch.linalg.LinAlgError(
            f"Hessian is not positive definite after dampening ({exc}); increase percdamp or the calibration set"
        ) from exc


def prepare_inverse(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of the damped H⁻¹ [D, D], dead-input mask [D]) in one call."""
    h, dead = mark_dead_inputs(hessian)
    return inverse_cholesky_upper(dampen(h, percdamp)), dead
