"""Layer Hessians of the SparseGPT/GPTQ reconstruction objective (shared conventions).

For a linear layer with inputs x (calibration tokens, n of them), the Hessian of
‖W X − Ŵ X‖² w.r.t. one output row is ``H = 2/n · Σ x xᵀ`` [K, K]. Conventions of the
references (IST-DASLab/gptq 2d65066, IST-DASLab/sparsegpt 147d215):

* dead inputs (``H_jj = 0``): set ``H_jj = 1`` and zero column j of W;
* dampening ``λ = percdamp · mean(diag H)`` added to the diagonal (percdamp 0.01);
* the algorithms use the *upper* Cholesky factor of ``H⁻¹``:
  ``U = chol(chol_inverse(chol(H)))ᵀ`` so that ``H⁻¹ = Uᵀ U``.
"""

from __future__ import annotations

import torch

from slimbench.calibration import InputStats


def hessian(stats: InputStats) -> torch.Tensor:
    """H = 2/n Σ xxᵀ from the engine's Gram statistics (a fresh float32 tensor)."""
    if stats.gram is None or not stats.tokens:
        raise ValueError("input statistics lack the Gram matrix")
    return stats.gram.float() * (2.0 / stats.tokens)


def fix_dead(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """In place: H_jj = 1 and W[:, j] = 0 for inputs j never active. Returns the dead mask."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    return dead


def damp(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """In place: add percdamp · mean(diag H) to the diagonal."""
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += percdamp * torch.mean(torch.diag(h))
    return h


def inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU)."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
