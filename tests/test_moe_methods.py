"""MoE models and the routing methods moe_topk / moe_topp (issue 21), on tiny models built offline:
trained MoEs (tiny-moe = Mixtral, tiny-olmoe, plus Qwen2-MoE/Qwen3-MoE configs) and a MoEfied
tiny Llama (tiny-llama-moe)."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slimbench.calibration import CalibrationEngine, LinearInputs
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.evaluation.size import footprint
from slimbench.methods import METHODS
from slimbench.models.adapters import adapter_for, expert_role, get_path
from slimbench.moe.dispatch import UnfusedExperts, masked_reference
from slimbench.moe.models import unfuse_experts
from slimbench.moe.routing import topp_mask
from slimbench.run import compress

TRAINED = ("tiny-moe", "tiny-olmoe")


def _method(name, **params):
    cls = METHODS.get(name)
    return cls(cls.Config(**params))


def _logits(bundle, seed=0):
    ids = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return bundle.model(ids).logits


def _calib(bundle, text_dir, cache_dir=None):
    calib = build_calibration_set(CalibConfig(nsamples=4, seqlen=64, seed=0), resolve_corpus("wikitext2", "validation", text_dir), bundle.tokenizer)
    calib.cache_dir = cache_dir
    return calib


def _experts_per_token(bundle, prefix):
    counters = bundle.hooks.counters(prefix)
    return sum(c["expert_calls"] for c in counters.values()) / sum(c["tokens"] for c in counters.values())


def _randomise_routers(bundle, scale=2.0):
    """Random-init routers are near uniform; sharper ones make top-p choose varying counts."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in bundle.adapter.get_blocks(bundle.model):
            router = get_path(block, f"{bundle.adapter.moe.block}.{bundle.adapter.moe.router}")
            router.weight.copy_(torch.randn(router.weight.shape, generator=g) * scale)


# -- trained MoE models ------------------------------------------------------------------------------
@pytest.mark.parametrize("family, extra", [
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    ("olmoe", dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False)),
    ("qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32)),
    ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8)),
])
def test_unfused_experts_compute_the_transformers_model(family, extra):
    config = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "experts" in name or ".gate." in name:
                p.normal_(0, 0.2)
    direct = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = model(ids).logits
    unfused = copy.deepcopy(model)
    adapter = adapter_for(family)
    assert unfuse_experts(unfused, adapter) == 2
    assert all(isinstance(get_path(b, adapter.experts_path), UnfusedExperts) for b in adapter.get_blocks(unfused))
    with torch.no_grad():
        torch.testing.assert_close(unfused(ids).logits, want, rtol=1e-5, atol=1e-5)
    fp = footprint(unfused, adapter)
    assert fp.params == direct  # the size evaluator's total = a direct count of the transformers model
    roles = adapter.block_linears(adapter.get_blocks(unfused)[0])
    for e in range(4):
        assert {expert_role(p, e) for p in ("gate", "up", "down")} <= set(roles)
    # the linears it counts = attention + every expert (+ shared expert) of the original model, counted directly
    linear_direct = sum(p.numel() for n, p in model.named_parameters()
                        if any(s in n for s in ("q_proj", "k_proj", "v_proj", "o_proj", "experts.gate_up_proj", "experts.down_proj",
                                                "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj")))
    assert fp.linear_params == linear_direct


@pytest.mark.parametrize("model", TRAINED)
def test_topk_with_the_models_k_is_its_own_routing_and_removal_is_bitwise(tiny_bundle, model):
    bundle = tiny_bundle(model)
    _randomise_routers(bundle)
    own = _logits(bundle)
    report = compress(_method("moe_topk", k=2), bundle, None)
    assert report.stages[0].hooks == ["moe_topk/0", "moe_topk/1"] and report.execution_path == "routed-experts"
    torch.testing.assert_close(_logits(bundle), own, rtol=1e-5, atol=1e-5)
    assert _experts_per_token(bundle, "moe_topk/") == 2.0
    bundle.hooks.remove_all("moe_topk/")
    assert torch.equal(_logits(bundle), own)


def test_topp_on_a_trained_moe_weights_by_raw_probabilities(tiny_bundle):
    bundle = tiny_bundle("tiny-olmoe")
    _randomise_routers(bundle, scale=0.15)
    block = bundle.adapter.get_blocks(bundle.model)[0].mlp
    h = torch.randn(40, 64, generator=torch.Generator().manual_seed(3))
    compress(_method("moe_topp", p=0.5), bundle, None)
    with torch.no_grad():
        got = block(h.view(1, 40, 64)).view(40, 64)
        P = torch.softmax(torch.nn.functional.linear(h, block.gate.weight), -1)
        mask = topp_mask(P, 0.5)
        torch.testing.assert_close(got, masked_reference(h, mask, block.experts, P * mask), rtol=1e-5, atol=1e-5)
    counts = bundle.hooks.counters("moe_topp/0")["moe_topp/0"]
    assert counts["expert_calls"] == int(mask.sum()) and counts["tokens"] == 40
    assert len({int(n) for n in mask.sum(-1)}) > 1  # a variable number of experts per token


def test_topp_with_p_1_runs_every_expert(tiny_bundle):
    bundle = tiny_bundle("tiny-moe")
    compress(_method("moe_topp", p=1.0), bundle, None)
    _logits(bundle)
    assert _experts_per_token(bundle, "moe_topp/") == 4.0


# -- MoEfied models --------------------------------------------------------------------------------
def test_moefied_model_with_all_experts_is_the_dense_model(tiny_bundle):
    dense, moe = tiny_bundle("tiny-llama"), tiny_bundle("tiny-llama-moe")
    torch.testing.assert_close(_logits(moe), _logits(dense), rtol=1e-5, atol=1e-5)
    assert footprint(moe.model, moe.adapter).params == footprint(dense.model, dense.adapter).params
    assert footprint(moe.model, moe.adapter).linear_params == footprint(dense.model, dense.adapter).linear_params


@pytest.mark.parametrize("router", ["oracle", "similarity"])
def test_moefied_routing_counts_and_restores(tiny_bundle, router):
    bundle = tiny_bundle("tiny-llama-moe")
    allx = _logits(bundle)
    compress(_method("moe_topp", p=1.0, router=router), bundle, None)
    torch.testing.assert_close(_logits(bundle), allx, rtol=1e-5, atol=1e-5)  # p = 1: every expert, weight 1
    assert _experts_per_token(bundle, "moe_topp/") == 8.0
    bundle.hooks.remove_all()
    compress(_method("moe_topk", k=3, router=router), bundle, None)
    routed = _logits(bundle)
    assert _experts_per_token(bundle, "moe_topk/") == 3.0 and not torch.allclose(routed, allx)
    bundle.hooks.remove_all()
    assert torch.equal(_logits(bundle), allx)


def test_mlp_router_trains_on_calibration_and_is_cached(tiny_bundle, text_dir, tmp_path):
    bundle = tiny_bundle("tiny-llama-moe")
    method = _method("moe_topp", p=0.5, router="mlp", router_tokens=200)
    assert method.requires_calibration
    calib = _calib(bundle, text_dir, tmp_path)
    first = compress(method, bundle, calib)
    out1 = _logits(bundle)
    assert first.stages[0].details["router_cache_hit"] is False
    assert list(tmp_path.glob("moe/mlp-routers-*.safetensors"))
    bundle.hooks.remove_all()
    second = compress(method, bundle, _calib(bundle, text_dir, tmp_path))
    assert second.stages[0].details["router_cache_hit"] is True and "moe mlp routers" in second.calibration_cache_hits
    assert torch.equal(_logits(bundle), out1)
    sel = second.stages[0].details["selection_metric_top20pct"]
    assert len(sel["mlp"]) == 2 and all(0 < v <= 1 for v in sel["mlp"])


def test_routing_checks_the_model_before_loading():
    with pytest.raises(ConfigError, match="no MoE layers"):
        _method("moe_topk").check(adapter_for("llama"))
    with pytest.raises(ConfigError, match="no router of its own"):
        _method("moe_topp").check(adapter_for("llama_moefied"))
    with pytest.raises(ConfigError, match="for MoEfied models"):
        _method("moe_topp", router="mlp").check(adapter_for("mixtral"))
    from slimbench.models.bundle import ModelShape

    with pytest.raises(ConfigError, match="exceeds the model's 4 experts"):
        _method("moe_topk", k=5).check_shape(ModelShape(num_experts=4))
    for bad in (dict(p=0.0), dict(p=1.5)):
        with pytest.raises(ConfigError, match=r"p must be"):
            _method("moe_topp", **bad)
    with pytest.raises(ConfigError, match="k must be"):
        _method("moe_topk", k=0)


# -- existing methods reach every expert ----------------------------------------------------------------
@pytest.mark.parametrize("model", TRAINED)
def test_expert_calibration_statistics_come_from_the_routed_tokens(tiny_bundle, text_dir, model):
    bundle = tiny_bundle(model)
    calib = _calib(bundle, text_dir)
    roles = tuple(expert_role("gate", e) for e in range(4))
    stats = CalibrationEngine(bundle, calib).collect(lambda i, block: {"in": LinearInputs(roles, {"sq_sum"})})
    tokens = calib.tokens.numel()
    for block_stats in stats:
        routed = [block_stats["in"][r].tokens for r in roles]
        assert sum(routed) == 2 * tokens and all(0 < n < tokens for n in routed)  # top-2: each token reaches 2 experts


@pytest.mark.parametrize("model", TRAINED)
@pytest.mark.parametrize("method, params", [("wanda", dict(sparsity=0.5)), ("rtn", dict(bits=4, group_size=32))])
def test_wanda_and_rtn_touch_every_expert(tiny_bundle, text_dir, model, method, params):
    bundle = tiny_bundle(model)
    calib = _calib(bundle, text_dir) if method == "wanda" else None
    report = compress(_method(method, **params), bundle, calib)
    names = {layer.name for layer in report.stages[0].layers}
    blocks = len(bundle.adapter.get_blocks(bundle.model))
    for i in range(blocks):
        for e in range(4):
            for part in ("gate", "up", "down"):
                assert f"model.layers.{i}.mlp.experts.experts.{e}.{part}_proj" in names
    for module in bundle.adapter.linear_paths(bundle.model).values():
        if method == "wanda":
            assert (bundle.adapter.weight_matrix(module) == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
        else:
            assert callable(getattr(module, "dequantize", None))  # packed
    assert report.params_after == sum(p.numel() for p in bundle.model.parameters() if p.dtype.is_floating_point) or method == "rtn"
    assert torch.isfinite(_logits(bundle)).all()


# -- the record ----------------------------------------------------------------------------------------
def test_record_holds_counted_experts_per_token(compose):
    from slimbench.run import run_experiment

    cfg = compose("model=tiny-llama-moe", "method=moe_topk", "method.k=3", "method.router=similarity", "eval=quick",
                  "eval.evaluators.latency=null", "eval.evaluators.perplexity.max_windows=1", "eval.evaluators.perplexity.seqlen=64")
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    record = outcome.record
    metrics = {m.key: m.value for m in record.metrics}
    assert metrics["moe.perplexity.experts_per_token"] == 3.0 and metrics["moe.experts_per_token"] == 3.0
    per_expert = 3 * 64 * 16  # an expert of tiny-llama-moe: 16 neurons x (gate + up + down) of width 64
    assert metrics["moe.perplexity.active_expert_params_per_token"] == 2 * 3 * per_expert  # 2 layers x 3 experts
    moe = record.artifacts["moe"]
    assert moe["experts_per_token_distribution"] == {3: 1.0}
    assert set(moe["per_layer"]) == {"moe_topk/0", "moe_topk/1"}
    assert moe["tokens_per_layer"] == 64 and sum(moe["per_layer"]["moe_topk/0"]["tokens_per_expert"]) == 3 * 64
    stage = record.compression.stages[0]
    assert stage.hooks == ["moe_topk/0", "moe_topk/1"] and stage.details["rule"] == "top-k" and stage.details["router"] == "similarity"
    assert record.compression.execution_path == "routed-experts" and not record.compression.baseline


def test_rtn_experts_then_topp_routing_in_one_pipeline(tiny_bundle):
    from slimbench.methods.base import check_stage_order

    bundle = tiny_bundle("tiny-olmoe")
    _randomise_routers(bundle, scale=0.15)
    rtn, topp = _method("rtn", bits=4, group_size=32), _method("moe_topp", p=0.5)
    check_stage_order([type(rtn), type(topp)])
    report = compress([rtn, topp], bundle, None)
    assert [s.method for s in report.stages] == ["rtn", "moe_topp"] and report.stages[1].hooks == ["moe_topp/0", "moe_topp/1"]
    assert report.execution_path.endswith("routed-experts")
    expert = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["gate[3]"]
    assert callable(getattr(expert, "dequantize", None))  # the routed experts are the packed ones
    assert torch.isfinite(_logits(bundle)).all()
    assert 1.0 <= _experts_per_token(bundle, "moe_topp/") < 4.0
