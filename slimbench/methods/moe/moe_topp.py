"""Dynamic-MoE top-p routing: each token runs as many experts as its router needs.

Huang, An et al., "Harder Tasks Need More Experts: Dynamic Routing in MoE Models", ACL 2024,
arXiv 2403.07652; reference ZhenweiAn/Dynamic_MoE @ f56bc20, ``modeling/modeling_moe.py``
(``top_p_sampling_batched_all_sequence``); METHODS-papers.md §3.1, §3.5.

Algorithm, per MoE layer and token (hooks on every MoE layer, ``methods.moe.common``):
  1. P = the router's probabilities over the E experts (a trained MoE: softmax of its logits in
     float32; a MoEfied model: the oracle/MLP router's predicted masses normalised to sum to 1,
     or the softmax of the similarity router's scores);
  2. sort P descending, c_k = cumulative sum of the first k;
  3. keep the sorted experts 1..k* where k* is the first index with c_{k*} > p (strict): the
     crossing expert is included, so at least one expert runs; if the sum never exceeds p
     (p = 1) every expert runs;
  4. output = Σ_{kept} P_i · Expert_i(h) with the raw probabilities, never renormalised (a
     trained MoE); a MoEfied model sums its kept experts with weight 1 (§3.5).
The reference's default threshold is p = 0.4. Execution path: routed experts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from slimbench.methods.base import register_method
from slimbench.methods.moe.common import RoutingMethod, router_param, router_tokens_param
from slimbench.moe.routing import topp_mask
from slimbench.params import check_params, param


@dataclass(frozen=True)
class MoETopPConfig:
    p: float = param(0.4, "cumulative router probability to reach (the reference's top_p_threshold)", gt=0, le=1)
    router: str = router_param()
    router_tokens: int = router_tokens_param()

    def __post_init__(self) -> None:
        check_params(self)


@register_method("moe_topp", config=MoETopPConfig, family="moe", sort="runtime", produces=())
class MoETopP(RoutingMethod):
    def rule(self):
        return functools.partial(topp_mask, p=self.config.p)

    def renormalise(self, model_config) -> bool:
        return False  # §3.1 step 4: the raw probabilities

    def details(self) -> dict:
        return {"rule": "top-p", "p": self.config.p}
