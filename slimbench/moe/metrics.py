"""Counted routing metrics: what the MoE routing hooks (``methods.moe.common.RoutingHook``) counted
while an evaluator ran, as record metrics.

Every routing hook counts, per MoE layer, the tokens it routed, the expert calls (Σ over tokens of
the experts each used), the tokens that used k experts and the tokens each expert computed. Over
one evaluator's run (the counters' difference before/after it):

* ``moe.<evaluator>.experts_per_token``: mean active experts per token, averaged over the MoE
  layers (Σ expert calls / Σ tokens over all layers: every layer sees the same tokens);
* ``moe.<evaluator>.active_expert_params_per_token``: parameters of the experts a token ran,
  summed over the MoE layers (packed experts count the weights they represent);
* details (the record's ``artifacts["moe"]``): per layer the mean, the distribution of experts per
  token (fraction of tokens with k experts) and the tokens per expert.

``moe.experts_per_token`` is the same over every evaluator's tokens together. Measured, never
estimated: tokens the hooks did not see are not in it.
"""

from __future__ import annotations

from slimbench.records import Metric

Counters = dict[str, dict[str, int]]


def _routing(before: Counters, after: Counters) -> dict[str, dict[str, int]]:
    """Per routing hook, what it counted between the two snapshots (hooks that routed tokens only)."""
    out = {}
    for name, counts in after.items():
        if "expert_calls" not in counts:
            continue
        old = before.get(name, {})
        delta = {k: v - old.get(k, 0) for k, v in counts.items()}
        if delta.get("tokens", 0) > 0:
            out[name] = delta
    return out


def _summary(layers: dict[str, dict[str, int]]) -> dict:
    tokens = sum(c["tokens"] for c in layers.values())
    calls = sum(c["expert_calls"] for c in layers.values())
    hist: dict[int, int] = {}
    for c in layers.values():
        for key, n in c.items():
            if key.startswith("tokens_with_"):
                k = int(key.removeprefix("tokens_with_").removesuffix("_experts"))
                hist[k] = hist.get(k, 0) + n
    per_layer = {
        name: {
            "experts_per_token": c["expert_calls"] / c["tokens"],
            "tokens": c["tokens"],
            "tokens_per_expert": [c[k] for k in sorted((k for k in c if k.startswith("expert_") and k.endswith("_tokens")),
                                                        key=lambda k: int(k.split("_")[1]))],
        }
        for name, c in layers.items()
    }
    params = sum(c.get("expert_params", 0) for c in layers.values())
    return {"experts_per_token": calls / tokens, "active_expert_params_per_token": params / (tokens // len(layers)),
            "tokens_per_layer": tokens // len(layers),
            "experts_per_token_distribution": {k: n / tokens for k, n in sorted(hist.items())}, "per_layer": per_layer}


def routing_metrics(label: str | None, before: Counters, after: Counters) -> tuple[list[Metric], dict]:
    """Metrics (``moe.<label>.experts_per_token``, or ``moe.experts_per_token`` for label None) and
    details of the routing done between two ``HookRegistry.counters()`` snapshots; nothing when no
    routing hook routed a token."""
    layers = _routing(before, after)
    if not layers:
        return [], {}
    summary = _summary(layers)
    prefix = "" if label is None else f"{label}."
    return [Metric(f"{prefix}experts_per_token", summary["experts_per_token"], higher_is_better=False, unit="experts", evaluator="moe"),
            Metric(f"{prefix}active_expert_params_per_token", summary["active_expert_params_per_token"], higher_is_better=False,
                   unit="count", evaluator="moe")], summary
