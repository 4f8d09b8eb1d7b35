"""Grouped dispatch: equals the masked computation, runs only selected experts, counts them."""

import functools

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slimbench.errors import ConfigError
from slimbench.models.adapters import ADAPTERS, get_path
from slimbench.moe.dispatch import FusedExperts, RoutingStats, SlicedExperts, grouped_dispatch, masked_reference, route_fused
from slimbench.moe.routing import expert_weights, topk_mask, topp_mask

TINY_MOE = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32, norm_topk_prob=True),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True, head_dim=8),
}


def _tiny_moe(model_type: str):
    config = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, **TINY_MOE[model_type],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    moe = model.model.layers[0].mlp
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    return config, moe


def _sliced(E=4, D=16, I=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    gate = torch.nn.Linear(D, E * I, bias=False)
    up = torch.nn.Linear(D, E * I, bias=True)
    down = torch.nn.Linear(E * I, D, bias=False)
    for lin in (gate, up, down):
        with torch.no_grad():
            for p in lin.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    groups = list(torch.randperm(E * I, generator=g).view(E, I).sort(dim=1).values)
    return SlicedExperts.from_dense(gate, up, down, groups, torch.nn.functional.silu), (gate, up, down)


def _fused(E=4, D=16, I=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FusedExperts(torch.randn(E, 2 * I, D, generator=g), torch.randn(E, D, I, generator=g), torch.nn.functional.silu)


@pytest.mark.parametrize("bank", [_sliced()[0], _fused()], ids=["sliced", "fused"])
@pytest.mark.parametrize("rule", ["top1", "top2", "topp", "empty-expert"])
@pytest.mark.parametrize("weighted", [False, True])
def test_grouped_dispatch_equals_the_masked_computation(bank, rule, weighted):
    g = torch.Generator().manual_seed(1)
    T = 37
    x = torch.randn(T, 16, generator=g)
    P = torch.softmax(2 * torch.randn(T, 4, generator=g), dim=-1)
    mask = {
        "top1": lambda: topk_mask(P, 1),
        "top2": lambda: topk_mask(P, 2),
        "topp": lambda: topp_mask(P, 0.6),
        "empty-expert": lambda: topk_mask(P, 2) & torch.tensor([True, False, True, True]),
    }[rule]()
    w = expert_weights(P, mask, renormalise=False) if weighted else None
    out, count = grouped_dispatch(x, mask, bank, w)
    torch.testing.assert_close(out, masked_reference(x, mask, bank, w), rtol=1e-5, atol=1e-5)
    assert torch.equal(count.tokens_per_expert, mask.sum(0))
    assert torch.equal(count.experts_per_token, mask.sum(1))


def test_sliced_experts_with_every_expert_sum_to_the_dense_ffn():
    bank, (gate, up, down) = _sliced()
    x = torch.randn(9, 16)
    dense = down(torch.nn.functional.silu(gate(x)) * up(x))
    out, _ = grouped_dispatch(x, torch.ones(9, 4, dtype=torch.bool), bank)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-4)


class _Spy:
    """An expert bank that records which experts ran on how many tokens."""

    num_experts = 4

    def __init__(self):
        self.calls = []

    def forward_expert(self, e, x):
        self.calls.append((e, x.shape[0]))
        return x * (e + 1)


def test_an_unselected_expert_does_no_work():
    spy = _Spy()
    mask = torch.tensor([[True, False, False, True], [False, False, False, True], [True, False, False, True]])
    x = torch.randn(3, 5)
    out, _ = grouped_dispatch(x, mask, spy)
    assert spy.calls == [(0, 2), (3, 3)]  # experts 1 and 2 never called; expert 3 on all tokens without a gather
    torch.testing.assert_close(out, masked_reference(x, mask, _Spy()))


@pytest.mark.parametrize("model_type", sorted(TINY_MOE))
def test_fused_dispatch_reproduces_the_transformers_moe_block(model_type):
    config, moe = _tiny_moe(model_type)
    spec = ADAPTERS.get(model_type).moe if model_type != "qwen3_moe" else ADAPTERS.get("olmoe").moe
    router, experts = get_path(moe, spec.router), get_path(moe, spec.experts)
    x = torch.randn(2, 7, 32)
    h = x.view(-1, 32)
    renorm = getattr(config, "norm_topk_prob", True)  # Mixtral always renormalises
    with torch.no_grad():
        logits = torch.nn.functional.linear(h, router.weight)
        rule = functools.partial(topk_mask, k=config.num_experts_per_tok)
        out, count = route_fused(h, logits, FusedExperts.of(experts), rule, renorm)
        if getattr(moe, "shared_expert", None) is not None:
            out = out + torch.sigmoid(moe.shared_expert_gate(h)) * moe.shared_expert(h)
        torch.testing.assert_close(out.view_as(x), moe(x), rtol=1e-5, atol=1e-5)
        assert (count.experts_per_token == config.num_experts_per_tok).all()
        # top-p: the raw probabilities weight the chosen experts (Dynamic-MoE), never renormalised
        P = torch.softmax(logits, dim=-1)
        out, count = route_fused(h, logits, FusedExperts.of(experts), functools.partial(topp_mask, p=0.5), renormalise=False)
        mask = topp_mask(P, 0.5)
        torch.testing.assert_close(out, masked_reference(h, mask, FusedExperts.of(experts), P * mask), rtol=1e-5, atol=1e-5)
        assert torch.equal(count.experts_per_token, mask.sum(-1))


def test_fused_experts_refuse_a_layout_they_do_not_compute():
    _, moe = _tiny_moe("mixtral")
    moe.experts.is_transposed = True
    with pytest.raises(ConfigError, match="is_transposed"):
        FusedExperts.of(moe.experts)


def test_routing_stats_accumulate_counts():
    bank = _fused()
    stats = RoutingStats(4)
    P = torch.softmax(torch.randn(10, 4), -1)
    for k in (1, 3):
        stats.add(grouped_dispatch(torch.randn(10, 16), topk_mask(P, k), bank)[1])
    assert stats.tokens == 20 and stats.expert_calls == 40 and stats.mean_active_experts == 2.0
    counters = stats.counters()
    assert counters["tokens_with_1_experts"] == 10 and counters["tokens_with_3_experts"] == 10
    assert sum(counters[f"expert_{e}_tokens"] for e in range(4)) == 40
    stats.reset()
    assert stats.tokens == 0 and stats.expert_calls == 0
