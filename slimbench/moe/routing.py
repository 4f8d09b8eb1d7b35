"""Routing rules: which experts each token uses, as pure functions of router probabilities.

P is a [T, E] tensor of non-negative router probabilities (one row per token). A rule returns
a boolean selection mask [T, E].

* ``topk_mask(P, k)``: the k most probable experts of every token.
* ``topp_mask(P, p)``: Dynamic-MoE top-p routing (Huang, An et al., "Harder Tasks Need More
  Experts: Dynamic Routing in MoE Models", ACL 2024, arXiv 2403.07652; rule of
  ``top_p_sampling_batched_all_sequence`` in ZhenweiAn/Dynamic_MoE @ f56bc20, see
  METHODS-papers.md §3.1): sort P in descending order, keep the sorted experts up to and
  including the first one at which the cumulative sum exceeds p (strictly), so at least one
  expert is always kept; if the sum never exceeds p (p >= 1) every expert is kept.
* ``all_mask(P)``: every expert.

Ties are broken deterministically: among equal probabilities the lower expert index ranks
first (a stable descending sort), for top-k and top-p alike.

Combination weights (``expert_weights``): a trained MoE sums its experts weighted by the raw
router probability (top-p: never renormalised, §3.1 step 4; top-k: renormalised over the
selected experts when the model does so, e.g. Mixtral always, OLMoE/Qwen-MoE when
``norm_topk_prob``). Experts of a MoEfied dense FFN are summed with weight 1 (§3.5): pass
``weights=None`` to the dispatch.

P from a router (``slimbench.moe.routers.probabilities``): its predicted non-negative
per-expert activation masses normalised to sum to 1 (``normalise_mass``), or the softmax of its
scores. Both are monotone in the scores, so the experts' ranking is the router's.
"""

from __future__ import annotations

from typing import Callable

import torch

from slimbench.errors import ConfigError

Rule = Callable[[torch.Tensor], torch.Tensor]  # P [T, E] -> selection mask [T, E] (bool)


def _ranking(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted P, expert order) per token, descending; ties keep the lower index first."""
    return torch.sort(P, dim=-1, descending=True, stable=True)  # [T, E], [T, E]


def _from_sorted(keep_sorted: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """A mask over sorted positions [T, E] -> the mask over experts [T, E]."""
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def all_mask(P: torch.Tensor) -> torch.Tensor:
    return torch.ones(P.shape, dtype=torch.bool, device=P.device)  # [T, E]


def topk_mask(P: torch.Tensor, k: int) -> torch.Tensor:
    E = P.shape[-1]
    if not 1 <= k <= E:
        raise ConfigError(f"top-k needs 1 <= k <= {E} experts, got k={k}")
    _, order = _ranking(P)
    keep_sorted = torch.zeros(P.shape, dtype=torch.bool, device=P.device)
    keep_sorted[..., :k] = True
    return _from_sorted(keep_sorted, order)  # [T, E]


def topp_mask(P: torch.Tensor, p: float) -> torch.Tensor:
    if not p > 0:
        raise ConfigError(f"top-p needs a threshold p > 0, got p={p}")
    if p >= 1:
        return all_mask(P)
    sorted_p, order = _ranking(P)  # [T, E]
    cum = sorted_p.cumsum(dim=-1)  # c_1 .. c_E
    before = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)  # c_0 = 0 .. c_{E-1}
    # sorted expert i is kept iff no earlier one crossed: c_{i-1} <= p (the crossing expert is kept)
    return _from_sorted(before <= p, order)  # [T, E]


def expert_weights(P: torch.Tensor, mask: torch.Tensor, renormalise: bool) -> torch.Tensor:
    """Combination weights of a trained MoE: P on the selected experts, optionally renormalised."""
    w = P * mask  # [T, E]
    return w / w.sum(dim=-1, keepdim=True) if renormalise else w


def normalise_mass(mass: torch.Tensor) -> torch.Tensor:
    """Non-negative per-expert masses [T, E] -> probabilities summing to 1 per token."""
    return mass / mass.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
