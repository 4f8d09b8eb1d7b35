"""Layer dropping (attn_drop, mlp_drop, block_drop, joint_drop, shortgpt) on tiny models."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.evaluation.latency import kv_cache_bytes
from slimbench.methods import METHODS
from slimbench.models.adapters import adapter_for, get_path
from slimbench.models.loaders import LoadContext, resolve_model
from slimbench.run import compress
from tests.conftest import CONF_DIR

LAYERS = 5
GEMMA_TYPES = "[sliding_attention,full_attention,sliding_attention,sliding_attention,full_attention]"
MODELS = ("tiny-llama", "tiny-gemma3")


def build(name: str):
    overrides = [f"model={name}", f"model.config.num_hidden_layers={LAYERS}"]
    if name == "tiny-gemma3":
        overrides.append(f"model.config.layer_types={GEMMA_TYPES}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    ctx = LoadContext(cache_dir=Path("/nonexistent-cache"))
    source, loader, config = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), ctx)
    bundle = loader.load(source, config, ctx)
    torch.manual_seed(1)  # non-trivial norm weights, so post-norms matter for the scores
    for name_, p in bundle.model.named_parameters():
        if "norm" in name_:
            p.data.uniform_(0.5, 1.5)
    return bundle


@pytest.fixture(scope="module")
def calib_for(text_dir):
    """Calibration windows, tokenized once per model family (tokenizing the corpus takes seconds)."""
    made = {}

    def make(bundle):
        key = bundle.source.name
        if key not in made:
            ref = resolve_corpus("wikitext2", "validation", text_dir)
            made[key] = build_calibration_set(CalibConfig(nsamples=2, seqlen=40, seed=0), ref, bundle.tokenizer)
        return made[key]

    return make


def method(name: str, **params):
    cls = METHODS.get(name)
    return cls(cls.Config(**params))


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def sublayer_params(block, adapter, sublayer: str) -> int:
    parts = [get_path(block, getattr(adapter, sublayer))] + [adapter.norm(block, f"{sublayer}_{s}") for s in ("in", "out")]
    return sum(params(p) for p in parts if p is not None)


def direct_similarities(bundle, calib) -> dict:
    """Per-block cos of (block input, mid residual, block output) from hooks on a plain forward."""
    adapter, blocks = bundle.adapter, bundle.adapter.get_blocks(bundle.model)
    sums = {k: torch.zeros(len(blocks), dtype=torch.float64) for k in ("attn", "mlp", "block")}
    captured, count = {}, 0
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_hook(lambda m, a, kw, out, i=i: captured.__setitem__(("io", i), (a[0] if a else kw["hidden_states"], out)), with_kwargs=True))
        hooks.append(adapter.norm(block, "mlp_in").register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(("mid", i), a[0])))
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
            for i in range(len(blocks)):
                x, y = captured[("io", i)]
                y = y[0] if isinstance(y, tuple) else y
                mid = captured[("mid", i)]
                for key, (a, b) in {"attn": (x, mid), "mlp": (mid, y), "block": (x, y)}.items():
                    sums[key][i] += F.cosine_similarity(a.float(), b.float(), dim=-1).double().sum()
            count += sample["input_ids"].numel()
    for h in hooks:
        h.remove()
    return {k: (v / count).tolist() for k, v in sums.items()}


# -- scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name,kind", [("attn_drop", "attn"), ("mlp_drop", "mlp"), ("block_drop", "block")])
def test_scores_match_direct_computation(model_name, name, kind, calib_for):
    bundle = build(model_name)
    calib = calib_for(bundle)
    expected = direct_similarities(bundle, calib)[kind]
    report = compress(method(name, drop_n=2), bundle, calib)
    got = report.stages[0].details["similarity"][kind]
    assert got == pytest.approx(expected, abs=1e-5)
    # the two most similar modules were dropped
    top2 = sorted(range(LAYERS), key=lambda i: -expected[i])[:2]
    assert sorted(i for _, i in report.stages[0].details["drop_order"]) == sorted(top2)


def test_joint_drop_takes_top_n_over_both_kinds(calib_for):
    bundle = build("tiny-gemma3")
    calib = calib_for(bundle)
    sims = direct_similarities(bundle, calib)
    ranked = sorted([(s, "attn", i) for i, s in enumerate(sims["attn"])] + [(s, "mlp", i) for i, s in enumerate(sims["mlp"])], reverse=True)
    report = compress(method("joint_drop", drop_n=4), bundle, calib)
    assert sorted(map(tuple, report.stages[0].details["drop_order"])) == sorted((k, i) for _, k, i in ranked[:4])


def test_shortgpt_removes_lowest_block_influence(calib_for):
    bundle = build("tiny-llama")
    calib = calib_for(bundle)
    sims = direct_similarities(bundle, calib)["block"]
    final_norm = get_path(bundle.model, bundle.adapter.final_norm)
    # the reference's last hidden state is post final norm: recompute the last block's cosine
    last, total, count = bundle.adapter.get_blocks(bundle.model)[-1], 0.0, 0
    seen = {}
    h = last.register_forward_hook(lambda m, a, kw, out: seen.update(x=a[0] if a else kw["hidden_states"], y=out), with_kwargs=True)
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
            y = seen["y"][0] if isinstance(seen["y"], tuple) else seen["y"]
            total += F.cosine_similarity(seen["x"].float(), final_norm(y).float(), dim=-1).double().sum().item()
            count += sample["input_ids"].numel()
    h.remove()
    sims[-1] = total / count
    report = compress(method("shortgpt", drop_n=2), bundle, calib)
    bi = report.stages[0].details["block_influence"]
    assert bi == pytest.approx([1 - s for s in sims], abs=1e-5)
    assert sorted(i for _, i in report.stages[0].details["drop_order"]) == sorted(sorted(range(LAYERS), key=lambda i: bi[i])[:2])


def test_block_drop_and_shortgpt_share_one_block_pass(calib_for, text_dir, tmp_path, monkeypatch):
    """Block Drop and ShortGPT (any options) read their scores from one cached pass over the blocks."""
    from slimbench.calibration import CalibrationEngine

    tokenizer = build("tiny-llama").tokenizer
    calib = build_calibration_set(CalibConfig(nsamples=2, seqlen=40, seed=0), resolve_corpus("wikitext2", "validation", text_dir), tokenizer)
    calib.cache_dir = tmp_path
    compress(method("block_drop", drop_n=2), build("tiny-llama"), calib)
    assert calib.cache_reads == []
    uncached = {a: compress(method("shortgpt", drop_n=2, angular=a), build("tiny-llama"), calib_for(build("tiny-llama"))) for a in (False, True)}
    monkeypatch.setattr(CalibrationEngine, "run", lambda *a, **k: pytest.fail("a second block pass instead of the shared one"))
    for angular in (False, True):
        report = compress(method("shortgpt", drop_n=2, angular=angular), build("tiny-llama"), calib)
        assert report.stages[0].details["block_influence"] == uncached[angular].stages[0].details["block_influence"]
    assert len(calib.cache_reads) == 2 and len(set(calib.cache_reads)) == 1


# -- removal -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name,sublayer", [("attn_drop", "attn"), ("mlp_drop", "mlp"), ("block_drop", None), ("shortgpt", None)])
def test_dropped_modules_leave_the_graph(model_name, name, sublayer, calib_for):
    bundle = build(model_name)
    adapter, blocks = bundle.adapter, list(bundle.adapter.get_blocks(bundle.model))
    per_block = [sublayer_params(b, adapter, sublayer) if sublayer else params(b) for b in blocks]
    before = params(bundle.model)
    report = compress(method(name, drop_n=2), bundle, calib_for(bundle))
    dropped = [i for _, i in report.stages[0].details["drop_order"]]
    assert params(bundle.model) == before - sum(per_block[i] for i in dropped)
    assert report.params_after == params(bundle.model)
    assert report.execution_path == "dropped-modules"
    now = adapter.get_blocks(bundle.model)
    if sublayer is None:
        assert len(now) == LAYERS - 2 and bundle.model.config.num_hidden_layers == LAYERS - 2
        assert [get_path(b, adapter.attn).layer_idx for b in now] == list(range(LAYERS - 2))
        assert [b for b in now] == [blocks[i] for i in range(LAYERS) if i not in dropped]
        if model_name == "tiny-gemma3":
            types = GEMMA_TYPES.strip("[]").split(",")
            assert bundle.model.config.layer_types == [types[i] for i in range(LAYERS) if i not in dropped]
    else:
        for i in dropped:
            assert params(now[i]) == params(blocks[i])  # the same objects, already shrunk
            assert sublayer_params(now[i], adapter, sublayer) == 0


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", ["attn_drop", "mlp_drop", "block_drop", "joint_drop", "shortgpt"])
def test_generation_with_cache_equals_without(model_name, name, calib_for):
    bundle = build(model_name)
    compress(method(name, drop_n=3), bundle, calib_for(bundle))
    ids = torch.randint(0, 250, (1, 24), generator=torch.Generator().manual_seed(0))  # longer than the sliding window (16)
    with torch.no_grad():
        cached = bundle.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, use_cache=True)
        uncached = bundle.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, use_cache=False)
        logits = bundle.model(cached).logits
    assert cached.shape[1] == 36
    assert torch.equal(cached, uncached)
    assert torch.isfinite(logits).all()


def _kv_per_layer(model, ids) -> list[int]:
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return [kv_cache_bytes(type("C", (), {"layers": [layer]})()) for layer in cache.layers]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name,n", [("attn_drop", 2), ("attn_drop", 4), ("block_drop", 3), ("mlp_drop", 3)])
def test_kv_cache_shrinks_with_dropped_attention(model_name, name, n, calib_for):
    bundle = build(model_name)
    ids = torch.randint(0, 250, (1, 12))  # shorter than the sliding window: every slot holds all tokens
    dense = _kv_per_layer(bundle.model, ids)
    report = compress(method(name, drop_n=n), bundle, calib_for(bundle))
    after = _kv_per_layer(bundle.model, ids)
    kept_attention = LAYERS if name == "mlp_drop" else LAYERS - n
    assert sum(after) == sum(dense) * kept_attention // LAYERS  # bytes per token drop proportionally
    assert sum(b > 0 for b in after) == kept_attention == report.stages[0].details["kv_cache_layers"]["after"]
    if name == "attn_drop":
        assert len(after) == LAYERS and all(after[i] == 0 for _, i in report.stages[0].details["drop_order"])


# -- configuration and iterative selection -----------------------------------------------------------
@pytest.mark.parametrize("name", ["attn_drop", "mlp_drop", "block_drop", "joint_drop", "shortgpt"])
def test_drop_n_validation(name, calib_for):
    with pytest.raises(ConfigError):
        method(name, drop_n=0)
    bundle = build("tiny-llama")
    limit = 2 * LAYERS if name == "joint_drop" else LAYERS
    with pytest.raises(ConfigError, match="smaller than"):
        compress(method(name, drop_n=limit), bundle, calib_for(bundle))


def test_check_rejects_models_without_the_sublayer():
    dit = dataclasses.replace(adapter_for("slimbench_dit"), attn=None)  # an architecture naming no attention module
    with pytest.raises(ConfigError):
        method("attn_drop").check(dit)
    method("mlp_drop").check(dit)
    method("attn_drop").check(adapter_for("gemma3_text"))


@pytest.mark.parametrize("name", ["block_drop", "attn_drop"])
def test_iterative_rescores_the_dropped_model(name, calib_for):
    """Round r's scores are those of a one-shot pass over the model with rounds < r's drops applied."""
    from slimbench.methods.layerdrop.common import drop_sublayer, remove_blocks

    bundle = build("tiny-llama")
    calib = calib_for(bundle)
    one_shot = compress(method(name, drop_n=3), build("tiny-llama"), calib).stages[0].details
    report = compress(method(name, drop_n=3, iterative=True), bundle, calib).stages[0].details
    rounds, kind = report["rounds"], "block" if name == "block_drop" else "attn"
    assert len(rounds) == 3 and report["selection"] == "iterative"
    assert rounds[0]["similarity"] == one_shot["similarity"]  # round 1 scores the original model
    for r in range(1, 3):
        fresh = build("tiny-llama")
        gone = [k[1] for x in rounds[:r] for k in x["dropped"]]
        if kind == "block":
            remove_blocks(fresh.model, fresh.adapter, sorted(gone))
        else:
            for i in gone:
                drop_sublayer(fresh.model, fresh.adapter, "attn", i)
        direct = compress(method(name, drop_n=1), fresh, calib).stages[0].details["similarity"][kind]
        if kind == "attn":  # blocks keep their places; the fresh run also scored the emptied sublayers
            direct = [None if i in gone else s for i, s in enumerate(direct)]
        alive = [s for s in rounds[r]["similarity"][kind] if s is not None]
        assert alive == pytest.approx([s for s in direct if s is not None], abs=1e-6)
        assert all(rounds[r]["similarity"][kind][i] is None for i in gone)  # a dropped module is not scored again
    for x in rounds:  # each round drops the most similar remaining module of its own scores
        scores = {i: s for i, s in enumerate(x["similarity"][kind]) if s is not None}
        assert x["dropped"][0][1] == max(scores, key=scores.get)
