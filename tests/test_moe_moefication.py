"""MoEfication of a SwiGLU decoder: balanced deterministic clustering, dense-equal MoEfied MLPs, routers."""

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slimbench.errors import ConfigError
from slimbench.hooks import HookRegistry
from slimbench.models.adapters import ADAPTERS
from slimbench.moe.cache import cached_tensors, layer_state, router_tensors
from slimbench.moe.moefication import MoEficationConfig, MoEfiedMLP, cluster_model, cluster_neurons, moefied_layers, moefy
from slimbench.moe.routers import (
    FFNInputs, MLPRouter, OracleRouter, RouterTrainConfig, SimilarityRouter, gate_centres, probabilities,
    selection_metric, train_mlp_router,
)
from slimbench.moe.routing import topk_mask, topp_mask


def _llama(mlp_bias=False, layers=2):
    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, mlp_bias=mlp_bias,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    if mlp_bias:
        with torch.no_grad():
            for block in model.model.layers:
                for lin in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
                    lin.bias.normal_()
    return model


ADAPTER = ADAPTERS.get("llama")
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def _moefied(E=4, split="kmeans_gate_up", mlp_bias=False):
    model = _llama(mlp_bias)
    with torch.no_grad():
        dense = model(IDS).logits
    labels = cluster_model(model, ADAPTER, MoEficationConfig(num_experts=E, split=split))
    return model, moefy(model, ADAPTER, labels), dense


@pytest.mark.parametrize("split", ["kmeans_gate_up", "kmeans_gate", "random"])
@pytest.mark.parametrize("mlp_bias", [False, True])
def test_all_experts_routing_equals_the_dense_model(split, mlp_bias):
    model, layers, dense = _moefied(split=split, mlp_bias=mlp_bias)
    assert [block.mlp for block in model.model.layers] == layers
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense, rtol=1e-4, atol=1e-4)
    assert layers[0].stats.tokens == IDS.numel() and layers[0].stats.mean_active_experts == 4.0


def test_moefied_mlp_equals_the_dense_mlp_and_routes_fewer_experts():
    model = _llama()
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        dense = mlp(x)
        labels = cluster_neurons(mlp.gate_proj.weight, mlp.up_proj.weight, MoEficationConfig(num_experts=8))
        moe = MoEfiedMLP.from_mlp(mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, labels)
        torch.testing.assert_close(moe(x), dense, rtol=1e-5, atol=1e-5)
        moe.router = OracleRouter()
        # the oracle with k = E and top-p with p = 1 are all experts again
        torch.testing.assert_close(moe.forward_routed(x, lambda P: topk_mask(P, 8)), dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(moe.forward_routed(x, lambda P: topp_mask(P, 1.0)), dense, rtol=1e-5, atol=1e-5)
        moe.stats.reset()
        sparse = moe.forward_routed(x, lambda P: topk_mask(P, 2))
    assert moe.stats.mean_active_experts == 2.0 and moe.stats.expert_calls == 2 * 15
    assert not torch.allclose(sparse, dense, atol=1e-3)
    # the oracle's two experts hold more of the output than two random ones
    err_oracle = (sparse - dense).norm()
    moe.router = SimilarityRouter(torch.randn(8, 32))
    with torch.no_grad():
        err_random = (moe.forward_routed(x, lambda P: topk_mask(P, 2)) - dense).norm()
    assert err_oracle < err_random


def test_clustering_is_balanced_and_deterministic():
    model = _llama()
    mlp = model.model.layers[1].mlp
    for E in (2, 4, 8):
        cfg = MoEficationConfig(num_experts=E)
        a = cluster_neurons(mlp.gate_proj.weight, mlp.up_proj.weight, cfg)
        b = cluster_neurons(mlp.gate_proj.weight.clone(), mlp.up_proj.weight.clone(), cfg)
        assert torch.equal(a, b)
        assert torch.bincount(a, minlength=E).tolist() == [64 // E] * E
    random_split = cluster_neurons(mlp.gate_proj.weight, mlp.up_proj.weight, MoEficationConfig(num_experts=4, split="random"))
    assert random_split.tolist() == [j // 16 for j in range(64)]


def test_kmeans_groups_similar_neurons():
    # neurons built as 4 tight clusters of gate/up directions are recovered exactly
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 2, 32, generator=g)
    perm = torch.randperm(64, generator=g)
    truth = torch.arange(64)[perm] // 16
    gate = centres[truth, 0] + 0.01 * torch.randn(64, 32, generator=g)
    up = centres[truth, 1] + 0.01 * torch.randn(64, 32, generator=g)
    labels = cluster_neurons(gate, up, MoEficationConfig(num_experts=4))
    pairs = {(int(t), int(l)) for t, l in zip(truth, labels)}
    assert len(pairs) == 4  # a one-to-one map between true clusters and experts


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="num_experts"):
        MoEficationConfig(num_experts=0)
    with pytest.raises(ConfigError, match="unknown split"):
        MoEficationConfig(split="metis")
    model_config = AutoConfig.for_model("llama", intermediate_size=1536)
    MoEficationConfig(num_experts=64).check(ADAPTER, model_config)
    with pytest.raises(ConfigError, match="does not divide the FFN width 1536"):
        MoEficationConfig(num_experts=10).check(ADAPTER, model_config)
    with pytest.raises(ConfigError, match="gated MLP"):
        MoEficationConfig().check(ADAPTERS.get("mixtral"), model_config)
    with pytest.raises(ConfigError, match="not MoEfied"):
        moefied_layers(_llama(), ADAPTER)
    with pytest.raises(ConfigError, match="no router"):
        _moefied()[1][0].forward_routed(torch.randn(2, 32), lambda P: topk_mask(P, 1))


def test_router_shapes_and_initialisation():
    _, layers, _ = _moefied(E=4)
    experts = layers[0].experts
    centres = gate_centres(experts)
    assert centres.shape == (4, 32)
    rows = torch.nn.functional.normalize(experts.experts[2].gate_proj.weight, dim=1)
    torch.testing.assert_close(centres[2], rows.mean(0))
    mlp = MLPRouter(centres)
    assert torch.equal(mlp.proj.weight, centres) and torch.equal(mlp.mix.weight, torch.eye(4))
    assert mlp.proj.bias is None and mlp.mix.bias is None
    h = torch.randn(6, 32)
    for router in (SimilarityRouter(centres), mlp, OracleRouter()):
        s = router.scores(h, experts)
        assert s.shape == (6, 4)
        P = probabilities(router, s)
        torch.testing.assert_close(P.sum(-1), torch.ones(6))
        assert torch.equal(topk_mask(P, 2), topk_mask(s, 2))  # P keeps the router's ranking
    sim = SimilarityRouter(centres).scores(h, experts)
    hn = torch.nn.functional.normalize(h, dim=-1)
    torch.testing.assert_close(sim, -(hn[:, None] - centres[None]).norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(OracleRouter().scores(h, experts)[:, 1], experts.experts[1].activation(h).abs().sum(-1))
    with pytest.raises(ConfigError, match="predicts no activation mass"):
        probabilities(SimilarityRouter(centres), sim, "mass")


def test_mlp_router_training_is_deterministic_and_beats_similarity_on_its_data():
    _, layers, _ = _moefied(E=8)
    experts = layers[0].experts
    g = torch.Generator().manual_seed(0)
    # inputs with structure: a few directions the router can learn
    h = torch.randn(4, 32, generator=g)[torch.randint(0, 4, (1000,), generator=g)] + 0.3 * torch.randn(1000, 32, generator=g)
    cfg = RouterTrainConfig(epochs=4, batch_size=128)
    r1, rep1 = train_mlp_router(h, experts, cfg)
    r2, rep2 = train_mlp_router(h, experts, cfg)
    assert all(torch.equal(a, b) for a, b in zip(r1.state_dict().values(), r2.state_dict().values()))
    assert rep1 == rep2 and rep1["train_tokens"] == 900 and rep1["val_tokens"] == 100
    assert len(rep1["metric_per_epoch"]) == 4
    second_best = sorted(rep1["metric_per_epoch"], reverse=True)[1]
    assert rep1["selection_metric"] == second_best  # the reference keeps the second-best epoch
    assert rep1["similarity_selection_metric"] < rep1["selection_metric"] <= rep1["oracle_selection_metric"]
    best, rep_best = train_mlp_router(h, experts, dataclasses.replace(cfg, checkpoint="best"))
    assert rep_best["selection_metric"] == max(rep1["metric_per_epoch"])
    with torch.no_grad():
        val = h[900:]
        masses = experts.activation_mass(val)
        assert selection_metric(best.logits(val), masses) == pytest.approx(rep_best["selection_metric"])


def test_ffn_inputs_observer_and_router_cache(tmp_path):
    model, layers, _ = _moefied(E=4)
    obs = FFNInputs(max_tokens=20)
    with HookRegistry.of(model).scope() as hooks:
        obs.attach(model.model.layers[1], ADAPTER, hooks)
        with torch.no_grad():
            model(IDS)
    assert not HookRegistry.of(model).names()
    inputs = obs.result()
    assert inputs.shape == (20, 32)
    routers = [MLPRouter(gate_centres(m.experts)) for m in layers]
    path = tmp_path / "routers.safetensors"
    tensors, hit = cached_tensors(path, lambda: router_tensors(routers), meta={"layers": 2})
    assert not hit and path.is_file()
    again, hit = cached_tensors(path, lambda: pytest.fail("recomputed"))
    assert hit
    restored = MLPRouter(torch.zeros(4, 32))
    restored.load_state_dict(layer_state(again, 1))
    assert torch.equal(restored.proj.weight, routers[1].proj.weight)


def test_parallel_clustering_gives_the_same_labels():
    model = _llama()
    cfg = MoEficationConfig(num_experts=4)
    assert torch.equal(cluster_model(model, ADAPTER, cfg, n_jobs=2), cluster_model(model, ADAPTER, cfg))
