"""Top-k expert routing: every token runs its k most probable experts.

The baseline of Dynamic-MoE (Huang, An et al., "Harder Tasks Need More Experts: Dynamic Routing
in MoE Models", ACL 2024, arXiv 2403.07652; ``experts_topk`` in ZhenweiAn/Dynamic_MoE @ f56bc20)
and MoEfication's expert selection (Zhang et al., arXiv 2110.01786, §5.2 of METHODS-papers.md).

Algorithm, per MoE layer and token (hooks on every MoE layer, ``methods.moe.common``):
  1. P = the router's probabilities over the E experts (a trained MoE: softmax of its logits;
     a MoEfied model: the oracle/similarity/MLP router's normalised scores);
  2. keep the k largest (ties: the lower expert index first);
  3. output = Σ_{kept} w_i · Expert_i(h): a trained MoE weights by P renormalised over the kept
     experts as the model does (``norm_topk_prob``; Mixtral always); a MoEfied model sums its
     experts with weight 1 (they are slices of one dense FFN).
With the model's own k, a trained MoE computes exactly its own routing; with k = E a MoEfied
model is the dense model. Execution path: routed experts (only the kept experts run).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from slimbench.errors import ConfigError
from slimbench.methods.base import register_method
from slimbench.methods.moe.common import RoutingMethod, router_param, router_tokens_param
from slimbench.moe.routing import topk_mask
from slimbench.params import check_params, param


@dataclass(frozen=True)
class MoETopKConfig:
    k: int = param(2, "experts per token", ge=1)
    router: str = router_param()
    router_tokens: int = router_tokens_param()

    def __post_init__(self) -> None:
        check_params(self)


@register_method("moe_topk", config=MoETopKConfig, family="moe", sort="runtime", produces=())
class MoETopK(RoutingMethod):
    def check_shape(self, shape) -> None:
        if shape.num_experts is not None and self.config.k > shape.num_experts:
            raise ConfigError(f"k={self.config.k} exceeds the model's {shape.num_experts} experts per layer")

    def rule(self):
        return functools.partial(topk_mask, k=self.config.k)

    def renormalise(self, model_config) -> bool:
        return bool(getattr(model_config, "norm_topk_prob", True))  # Mixtral has no flag: it always renormalises

    def details(self) -> dict:
        return {"rule": "top-k", "k": self.config.k}
