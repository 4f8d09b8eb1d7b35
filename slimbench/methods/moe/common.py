"""What the MoE routing methods (``moe_topk``, ``moe_topp``) share: the router of each MoE layer,
the routing hook, and the pre-load checks.

A routing method installs one ``RoutingHook`` per MoE layer (``bundle.hooks``, named
``<method>/<layer>``). The hook replaces the layer's own expert selection and computes only the
chosen experts (``slimbench.moe.dispatch.grouped_dispatch``):

* a **trained MoE** (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE; ``router=own``): P = softmax of the
  model's router logits (float32), experts chosen by the rule, summed weighted by P
  (``route_fused``): top-k renormalises over the chosen experts as the model does
  (``norm_topk_prob``; Mixtral always), top-p never (Dynamic-MoE, METHODS-papers.md §3.1 step 4);
  a shared expert (Qwen2-MoE) is added as the model adds it;
* a **MoEfied dense model** (``router`` = ``oracle`` | ``similarity`` | ``mlp``,
  ``slimbench.moe.routers``): P from the router's scores (its predicted masses normalised to sum
  to 1, or the softmax of the similarity scores), the chosen experts summed with weight 1 (§3.5).
  The MLP router is trained per layer on the FFN inputs of the run's calibration set (the first
  ``router_tokens`` tokens) and cached as safetensors by (model, calibration fingerprint, options).

Each hook counts what ran (tokens, expert calls, tokens with k experts, tokens per expert);
``slimbench.moe.metrics`` turns the counts into the record's metrics. Removing the hooks restores
the model's own routing (all experts for a MoEfied model) bitwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.errors import ConfigError
from slimbench.evaluation.size import module_storage
from slimbench.hooks import Hook
from slimbench.methods.base import MethodBase, MethodResult
from slimbench.models.adapters import Adapter, MoESpec, get_path
from slimbench.moe.cache import cache_key, cached_tensors, layer_state, router_tensors
from slimbench.moe.dispatch import DispatchCount, route_fused
from slimbench.moe.routers import FFNInputs, MLPRouter, OracleRouter, RouterTrainConfig, SimilarityRouter, gate_centres, probabilities, train_mlp_router
from slimbench.moe.routing import Rule
from slimbench.params import param

ROUTERS = ("own", "oracle", "similarity", "mlp")
ROUTER_DOC = "own: a trained MoE's router; MoEfied models: oracle (true masses, an upper bound), similarity (no training) or mlp (trained)"


def router_param():
    return param("own", ROUTER_DOC, choices=ROUTERS)


def router_tokens_param():
    return param(16384, "router=mlp: FFN input tokens per layer it trains on (the first of the calibration set)", ge=10)


# -- counting -------------------------------------------------------------------------------------
class RoutingHook(Hook):
    """One MoE layer's expert selection replaced by ``route(module, x) -> (out, DispatchCount)``;
    ``expert_params[e]``: the parameters of expert e (counted as ``expert_params`` per routed token)."""

    def __init__(self, route: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, DispatchCount]], expert_params: list[int]) -> None:
        super().__init__()
        self.route = route
        self.expert_params = torch.tensor(expert_params, dtype=torch.long)  # [E]

    def forward(self, module, call, x, *args, **kwargs):
        out, count = self.route(module, x)
        experts_per_token = count.experts_per_token.cpu()
        self.count("tokens", int(experts_per_token.numel()))
        self.count("expert_calls", int(experts_per_token.sum()))
        for k, n in enumerate(torch.bincount(experts_per_token).tolist()):
            if n:
                self.count(f"tokens_with_{k}_experts", n)
        for e, n in enumerate(count.tokens_per_expert.tolist()):
            self.count(f"expert_{e}_tokens", n)
        self.count("expert_params", int((count.tokens_per_expert.cpu() * self.expert_params).sum()))
        return out


# -- routes ---------------------------------------------------------------------------------------
def trained_route(spec: MoESpec, rule: Rule, renormalise: bool):
    """A trained MoE block's forward with the rule's experts (``route_fused``) plus its shared expert."""

    def route(block: nn.Module, hidden: torch.Tensor):
        h = hidden.reshape(-1, hidden.shape[-1])  # [T, D]
        router = get_path(block, spec.router)
        logits = F.linear(h, router.weight, getattr(router, "bias", None))  # [T, E]
        out, count = route_fused(h, logits, get_path(block, spec.experts), rule, renormalise)
        shared = get_path(block, spec.shared_expert)
        if shared is not None:
            out = out + torch.sigmoid(get_path(block, spec.shared_gate)(h)) * shared(h)
        return out.view_as(hidden), count

    return route


def moefied_route(router: nn.Module, rule: Rule):
    """A MoEfied MLP's forward with the experts the rule picks from the router's P (weight 1 each)."""

    def route(mlp: nn.Module, x: torch.Tensor):
        return mlp.forward_selected(x, lambda h: rule(probabilities(router, router.scores(h, mlp.experts))))

    return route


# -- routers of a MoEfied model --------------------------------------------------------------------
def _oracle(bundle, layers, calib, tokens):
    return [OracleRouter() for _ in layers], {}


def _similarity(bundle, layers, calib, tokens):
    return [SimilarityRouter.from_experts(m.experts) for m in layers], {}


def _mlp(bundle, layers, calib, tokens):
    """Per-layer MLP routers trained on the calibration set's FFN inputs; cached as safetensors."""
    from slimbench.calibration import CalibrationEngine

    cfg = RouterTrainConfig()
    parts = {"model": bundle.source.to_dict(), "calibration": calib.fingerprint(), "router": dataclasses.asdict(cfg), "tokens": tokens}
    root = getattr(calib, "cache_dir", None)
    path = None if root is None else Path(root) / "moe" / f"mlp-routers-{cache_key(parts)}.safetensors"

    def train() -> dict[str, torch.Tensor]:
        inputs = CalibrationEngine(bundle, calib).collect(lambda i, block: {"ffn": FFNInputs(tokens)}, desc="moe router inputs")
        routers, metrics = [], []
        for layer, stats in zip(layers, inputs):
            router, report = train_mlp_router(stats["ffn"], layer.experts, cfg)
            routers.append(router)
            metrics.append([report["selection_metric"], report["similarity_selection_metric"], report["oracle_selection_metric"]])
        return {**router_tensors(routers), "selection_metrics": torch.tensor(metrics, dtype=torch.float64)}  # [L, 3]

    tensors, hit = cached_tensors(path, train, meta=parts)
    if hit:
        calib.cache_reads.append("moe mlp routers")
    routers = []
    for i, layer in enumerate(layers):
        router = MLPRouter(gate_centres(layer.experts))
        router.load_state_dict(layer_state(tensors, i))
        routers.append(router)
    metrics = tensors["selection_metrics"].tolist()
    details = {"router_cache_hit": hit, "train_tokens_per_layer": tokens,
               "selection_metric_top20pct": {"mlp": [m[0] for m in metrics], "similarity": [m[1] for m in metrics], "oracle": [m[2] for m in metrics]}}
    return routers, details


MOEFIED_ROUTERS = {"oracle": _oracle, "similarity": _similarity, "mlp": _mlp}


# -- the method base ---------------------------------------------------------------------------------
class RoutingMethod(MethodBase):
    """A routing rule applied to every MoE layer through hooks (subclasses: ``rule()``, ``details()``)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.requires_calibration = config.router == "mlp"  # only the MLP router trains

    def rule(self) -> Rule:
        raise NotImplementedError

    def renormalise(self, model_config) -> bool:
        """Whether a trained MoE's chosen probabilities are renormalised (per rule)."""
        raise NotImplementedError

    def check(self, adapter: Adapter) -> None:
        moe, router = adapter.moe, self.config.router
        if moe is None:
            raise ConfigError(f"{self.name} routes experts, but the {adapter.family} model has no MoE layers "
                              "(use a MoE model such as model=tiny-moe, or a MoEfied one such as model=smollm2-135m-moe)")
        if moe.trained and router != "own":
            raise ConfigError(f"router={router} is for MoEfied models; the trained MoE {adapter.family} routes with its own router (router=own)")
        if not moe.trained and router == "own":
            raise ConfigError("a MoEfied model has no router of its own: set method.router to mlp, similarity or oracle")

    def apply(self, bundle, calib) -> MethodResult:
        adapter = bundle.adapter
        self.check(adapter)
        rule = self.rule()
        modules = [get_path(block, adapter.moe.block) for block in adapter.get_blocks(bundle.model)]
        details: dict = {}
        if adapter.moe.trained:
            renorm = self.renormalise(bundle.model.config)
            routes = [trained_route(adapter.moe, rule, renorm) for _ in modules]
            details["renormalised"] = renorm
        else:
            if self.requires_calibration and calib is None:
                raise ConfigError(f"{self.name} with router=mlp needs a calibration set (calib=...)")
            routers, details = MOEFIED_ROUTERS[self.config.router](bundle, modules, calib, self.config.router_tokens)
            routes = [moefied_route(r, rule) for r in routers]
        for i, (block, route) in enumerate(zip(adapter.get_blocks(bundle.model), routes)):
            params = [module_storage(expert)[0] for expert in adapter.expert_modules(block)]
            bundle.hooks.add(f"{self.name}/{i}", modules[i], RoutingHook(route, params))
        notes = ["the oracle router computes every expert's gate/up to rank them: a quality upper bound, not a speedup"] \
            if self.config.router == "oracle" else []
        return MethodResult(
            execution_path="routed-experts",
            details={**self.details(), "router": self.config.router, "moe": "trained" if adapter.moe.trained else "moefied",
                     "layers": len(modules), **details},
            notes=notes,
        )

    def details(self) -> dict:
        raise NotImplementedError
