"""Structured pruning: physical KV-group/channel removal, Numerical Pruning and FLAP."""

from pathlib import Path

import pytest
import torch

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.evaluation.latency import kv_cache_bytes
from slimbench.methods.pruning import structured as st
from slimbench.methods.pruning.flap import Flap, FlapConfig, flap_threshold_keep
from slimbench.methods.pruning.numerical_pruning import (
    NumericalPruning,
    NumericalPruningConfig,
    closed_form_scores,
    compensated_weight,
    newton_scores,
    score_matrix,
)
from tests.conftest import CONF_DIR

# (conf name, config overrides): tiny-gemma3 has a single KV head, so a 2-KV-head variant is
# used where KV groups must be removable.
MODELS = {
    "tiny-llama": ("tiny-llama", ()),  # GQA 4q/2kv, head_dim 16
    "tiny-gemma3-kv2": ("tiny-gemma3", ("model.config.num_key_value_heads=2",)),  # 4q/2kv, sliding + global
}


def build(key: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from slimbench.models.loaders import LoadContext, resolve_model

    name, overrides = MODELS[key]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", *overrides])
    ctx = LoadContext(cache_dir=Path("/nonexistent-cache"))
    source, loader, config = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), ctx)
    torch.manual_seed(0)
    return loader.load(source, config, ctx)


_CALIB: dict = {}


def calibration(bundle, text_dir):
    """4 × 64-token windows; built once per tokenizer class (tokenizing the split is the slow part)."""
    key = type(bundle.tokenizer).__name__
    if key not in _CALIB:
        ref = resolve_corpus("wikitext2", "validation", text_dir)
        _CALIB[key] = build_calibration_set(CalibConfig(nsamples=4, seqlen=64, seed=0), ref, bundle.tokenizer)
    return _CALIB[key]


def prompt(bundle):
    return bundle.tokenizer("The quick brown fox", return_tensors="pt").input_ids


def greedy(model, ids, use_cache):
    return model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=0)


# -- physical removal ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(MODELS))
def test_removal_shapes_generate_and_cache(key):
    bundle = build(key)
    model, adapter = bundle.model, bundle.adapter
    ids = prompt(bundle)
    dense_cache = kv_cache_bytes(model(ids, use_cache=True).past_key_values)
    block = adapter.get_blocks(model)[0]
    geo = st.block_geometry(adapter, model.config, block)
    assert geo.kv_heads == 2 and geo.group_size == 2
    st.remove_attention_groups(adapter, block, geo, torch.tensor([1]))
    st.remove_mlp_channels(adapter, block, torch.arange(0, geo.intermediate, 2))
    lin = adapter.block_linears(block)
    d, hd = model.config.hidden_size, geo.head_dim
    assert tuple(lin["q"].weight.shape) == (2 * hd, d)  # the 2 query heads of the kept group
    assert tuple(lin["k"].weight.shape) == tuple(lin["v"].weight.shape) == (hd, d)
    assert tuple(lin["o"].weight.shape) == (d, 2 * hd)
    assert tuple(lin["gate"].weight.shape) == tuple(lin["up"].weight.shape) == (geo.intermediate // 2, d)
    assert tuple(lin["down"].weight.shape) == (d, geo.intermediate // 2)
    assert adapter.get_blocks(model)[0].self_attn.num_key_value_groups == 2  # query/KV ratio kept
    with torch.no_grad():
        out = model(ids, use_cache=True)
        assert torch.isfinite(out.logits).all()
        # the pruned layer caches one KV head instead of two
        assert kv_cache_bytes(out.past_key_values) < dense_cache
        assert torch.equal(greedy(model, ids, True), greedy(model, ids, False))


def test_removed_group_matches_zeroed_weights():
    """Slicing a group out equals zeroing its q/k/v rows and o columns in the dense model."""
    bundle, ref = build("tiny-llama"), build("tiny-llama")
    adapter = bundle.adapter
    block, rblock = adapter.get_blocks(bundle.model)[1], adapter.get_blocks(ref.model)[1]
    geo = st.block_geometry(adapter, bundle.model.config, block)
    st.remove_attention_groups(adapter, block, geo, torch.tensor([0]))
    with torch.no_grad():
        lin = adapter.block_linears(rblock)
        lin["o"].weight[:, geo.group_channels:] = 0  # group 1's o input columns
    ids = prompt(bundle)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(ids).logits, ref.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_sliced_linear_biases():
    lin = torch.nn.Linear(6, 4, bias=True)
    new = st.sliced_linear(lin, rows=torch.tensor([0, 2]), cols=torch.tensor([1, 5]))
    assert torch.equal(new.weight, lin.weight[[0, 2]][:, [1, 5]]) and torch.equal(new.bias, lin.bias[[0, 2]])
    nobias = torch.nn.Linear(6, 4, bias=False)
    added = st.sliced_linear(nobias, cols=torch.tensor([0]), bias=torch.ones(4))
    assert added.bias is not None and torch.equal(added.bias, torch.ones(4))


def test_guard_keeps_one_unit():
    keep, fired = st.ensure_nonempty(torch.zeros(3, dtype=torch.bool), torch.tensor([0.1, 0.9, 0.5]))
    assert fired and keep.tolist() == [False, True, False]


# -- Numerical Pruning ----------------------------------------------------------------------------
def _random_psd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * d, d, generator=g, dtype=torch.float64)  # inputs [N, in]
    weight = torch.randn(5, d, generator=g, dtype=torch.float64)  # [out, in]
    return score_matrix(weight, x.t() @ x / x.shape[0], damping=0.01)


def test_closed_form_equals_newton():
    a = _random_psd(12)
    lam = 3.0 * float(a.diagonal().mean())
    closed = closed_form_scores(a, rho=0.25, lam=lam)
    newton = newton_scores(a, rho=0.25, lam=lam, steps=3)
    torch.testing.assert_close(newton, closed, atol=1e-8, rtol=1e-8)
    # the λ→∞ limit: large λ approaches it, and Σ(1 − z) = ρD exactly
    limit = closed_form_scores(a, rho=0.25, lam=None)
    assert float((1 - limit).sum()) == pytest.approx(0.25 * 12)
    torch.testing.assert_close(closed_form_scores(a, 0.25, lam=1e9 * float(a.diagonal().mean())), limit, atol=1e-6, rtol=1e-6)
    # and Newton's fixed point is a stationary point of the objective
    grad = a @ (newton - 1) + lam * (newton.sum() - 0.75 * 12)
    assert grad.abs().max() < 1e-8


def test_compensation_reduces_output_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g) @ torch.randn(16, 16, generator=g)  # correlated inputs [N, in]
    weight = torch.randn(8, 16, generator=g)  # [out, in]
    keep = torch.ones(16, dtype=torch.bool)
    keep[[1, 4, 9, 13]] = False
    target = x @ weight.t()
    plain = (x[:, keep] @ weight[:, keep].t() - target).pow(2).sum()
    comp_w = compensated_weight(weight, x.t() @ x / x.shape[0], keep, gamma=0.0)
    comp = (x[:, keep] @ comp_w.t() - target).pow(2).sum()
    assert comp < 0.5 * plain


def test_np_global_units_count_and_whole_groups(text_dir):
    bundle = build("tiny-llama")
    calib = calibration(bundle, text_dir)
    assert bundle.adapter.tied_embeddings(bundle.model)
    embed = bundle.model.get_input_embeddings().weight.clone()
    cfg = NumericalPruningConfig(ratio=0.3, ratio_of="units")
    result = NumericalPruning(cfg).apply(bundle, calib)
    d = result.details
    total = d["kv_groups_total"] + d["channels_total"]
    assert d["kv_groups_removed"] + d["channels_removed"] == int(0.3 * total)
    assert result.execution_path == "sliced-dense" and not d["guard_fired"]
    assert bundle.adapter.tied_embeddings(bundle.model)  # embeddings/lm_head untouched and still tied
    assert torch.equal(bundle.model.get_input_embeddings().weight, embed)
    for block in bundle.adapter.get_blocks(bundle.model):
        lin = bundle.adapter.block_linears(block)
        geo = st.block_geometry(bundle.adapter, bundle.model.config, block)
        assert lin["k"].out_features == lin["v"].out_features == geo.kv_heads * geo.head_dim
        assert lin["q"].out_features == lin["o"].in_features == 2 * lin["k"].out_features  # ratio kept


@pytest.mark.parametrize("key", sorted(MODELS))
def test_params_target_hit(key, text_dir):
    """ratio_of=params: the measured attention+MLP reduction is within one unit of the target."""
    for method in (NumericalPruning(NumericalPruningConfig(ratio=0.3, ratio_of="params")), Flap(FlapConfig(ratio=0.3))):
        bundle = build(key)
        before = st.prunable_params(bundle.adapter, bundle.model)
        d = method.apply(bundle, calibration(bundle, text_dir)).details
        assert d["prunable_params_before"] == before
        assert d["prunable_params_after"] == st.prunable_params(bundle.adapter, bundle.model)
        biggest_unit = max(d["params_per_kv_group"] + d["params_per_channel"])
        assert abs(d["param_reduction"] - 0.3) * before <= biggest_unit, (method.name, d["param_reduction"])


def test_np_uniform_allocation(text_dir):
    bundle = build("tiny-llama")
    result = NumericalPruning(NumericalPruningConfig(ratio=0.5, allocation="uniform")).apply(bundle, calibration(bundle, text_dir))
    o = [x for x in result.layers if x.role == "o"]
    down = [x for x in result.layers if x.role == "down"]
    assert [len(x.extra["kept_kv_groups"]) for x in o] == [1, 1]
    assert [x.extra["kept_channels"] for x in down] == [64, 64]
    assert all(x.change == "sliced" for x in result.layers)


def test_np_guard_fires_when_all_channels_selected(text_dir):
    bundle = build("tiny-llama")
    # 259 of the 260 units are selected: at most one layer keeps anything of its own
    result = NumericalPruning(NumericalPruningConfig(ratio=0.999)).apply(bundle, calibration(bundle, text_dir))
    assert result.details["guard_fired"]
    for block in bundle.adapter.get_blocks(bundle.model):
        lin = bundle.adapter.block_linears(block)
        assert lin["down"].in_features >= 1 and lin["k"].out_features >= 1  # every layer kept a channel and a group
    with torch.no_grad():
        assert torch.isfinite(bundle.model(prompt(bundle)).logits).all()


def test_np_compensation_lowers_block_error(text_dir):
    """Compensated o/down beat plain removal on the calibration loss of the final hidden state."""
    def hidden_error(compensate):
        bundle, ref = build("tiny-llama"), build("tiny-llama")
        calib = calibration(bundle, text_dir)
        NumericalPruning(NumericalPruningConfig(ratio=0.3, compensate=compensate)).apply(bundle, calib)
        err = 0.0
        with torch.no_grad():
            for s in calib.samples():
                h = bundle.model(**s, output_hidden_states=True).hidden_states[1]
                r = ref.model(**s, output_hidden_states=True).hidden_states[1]
                err += float((h - r).pow(2).sum())
        return err

    assert hidden_error(True) < hidden_error(False)


# -- FLAP ----------------------------------------------------------------------------------------
def test_flap_threshold_rule():
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    # cumsum 1..5, target (1−0.4)·5 = 3 → threshold = 3rd score (3.0), keep strictly above
    assert flap_threshold_keep(scores, weights, 0.4).tolist() == [True, True, False, False, False]
    assert flap_threshold_keep(scores, weights, 0.0).all()


def test_flap_bias_compensation_lowers_error(text_dir):
    def hidden_error(bias):
        bundle, ref = build("tiny-gemma3-kv2"), build("tiny-gemma3-kv2")
        calib = calibration(bundle, text_dir)
        Flap(FlapConfig(ratio=0.3, bias=bias)).apply(bundle, calib)
        err = 0.0
        with torch.no_grad():
            for s in calib.samples():
                h = bundle.model(**s, output_hidden_states=True).hidden_states[1]
                r = ref.model(**s, output_hidden_states=True).hidden_states[1]
                err += float((h - r).pow(2).sum())
        return err, bundle

    with_bias, bundle = hidden_error(True)
    without, _ = hidden_error(False)
    assert with_bias < without
    o = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["down"]
    assert o.bias is not None  # a bias parameter was added


def test_flap_scores_gqa_groups(text_dir):
    bundle = build("tiny-llama")
    d = Flap(FlapConfig(ratio=0.5, ratio_of="units")).apply(bundle, calibration(bundle, text_dir)).details
    total = d["kv_groups_total"] + d["channels_total"]
    assert abs(d["kv_groups_removed"] + d["channels_removed"] - 0.5 * total) <= 1
    assert d["unit_weight_group"] == 1 and d["structure"] == "AL-AM"


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=-0.1), dict(ratio_of="heads"), dict(allocation="local"),
                                 dict(newton_steps=5), dict(lam=-1.0), dict(damping=0.0)])
def test_np_config_validation(bad):
    with pytest.raises(ConfigError):
        NumericalPruningConfig(**bad)


@pytest.mark.parametrize("bad", [dict(ratio=1.5), dict(metric="L2"), dict(ratio_of="x")])
def test_flap_config_validation(bad):
    with pytest.raises(ConfigError):
        FlapConfig(**bad)


def test_check_rejects_fused_qkv():
    from slimbench.models.adapters import adapter_for

    with pytest.raises(ConfigError):
        Flap(FlapConfig()).check(adapter_for("gpt2"))


def test_np_records_the_scaled_score_ranges_and_explains_an_attention_free_result(text_dir):
    """The global sort compares α·z_group with z_channel; the record holds both ranges, and when
    no KV group is removed a note says why (the paper's Ψ as written)."""
    bundle = build("tiny-llama")
    result = NumericalPruning(NumericalPruningConfig(ratio=0.2)).apply(bundle, calibration(bundle, text_dir))
    d = result.details
    lo_g, hi_g = d["group_score_range"]
    lo_c, hi_c = d["channel_score_range"]
    assert lo_g <= hi_g and lo_c <= hi_c
    if lo_g > hi_c:  # every scaled group score above every channel score: only channels go
        assert d["kv_groups_removed"] == 0
        assert any("no attention removed" in n for n in result.notes)
    else:
        assert not any("no attention removed" in n for n in result.notes)
