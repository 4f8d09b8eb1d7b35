"""Low-rank methods and the factored linear module, on tiny models."""

import pytest
import torch

from slimbench.calibration import CalibrationEngine

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.evaluation.size import footprint
from slimbench.kernels.factored import FactoredLinear, factorize
from slimbench.methods.lowrank.asvd import ASVD, ASVDConfig, binary_search
from slimbench.methods.lowrank.common import column_scaled_factors, keep_rank, truncated_factors, whitened_factors
from slimbench.methods.lowrank.fwsvd import FWSVD, FWSVDConfig, fisher_rows
from slimbench.methods.lowrank.svd import SVD, SVDConfig
from slimbench.methods.lowrank.svd_llm import SVDLLM, SVDLLMConfig, whitening
from slimbench.run import compress


def _calib(bundle, text_dir, n=2, seqlen=32):
    ref = resolve_corpus("wikitext2", "validation", text_dir)
    return build_calibration_set(CalibConfig(nsamples=n, seqlen=seqlen, seed=0), ref, bundle.tokenizer)


def _logits(bundle):
    ids = bundle.tokenizer("The quick brown fox jumps", return_tensors="pt").input_ids
    with torch.no_grad():
        return bundle.model(ids).logits


def test_full_rank_factorizations_are_exact():
    torch.manual_seed(0)
    w = torch.randn(24, 40, dtype=torch.float64)
    x = torch.randn(200, 40, dtype=torch.float64) @ torch.randn(40, 40, dtype=torch.float64)
    chol, inv, _ = whitening(x.t() @ x)
    scale = torch.rand(40, dtype=torch.float64) + 0.1
    for left, right in (truncated_factors(w, 24), whitened_factors(w, 24, chol, inv), column_scaled_factors(w, 24, scale)):
        assert left.shape == (24, 24) and right.shape == (24, 40)
        assert torch.allclose(left @ right, w, atol=1e-9)


def test_factored_linear_reproduces_the_dense_layer_at_full_rank():
    torch.manual_seed(0)
    dense = torch.nn.Linear(16, 8, bias=True)
    left, right = truncated_factors(dense.weight.double(), 8)
    holder = torch.nn.Module()
    holder.lin = dense
    with pytest.raises(ValueError, match="does not save parameters"):  # 8·(16+8) > 16·8
        factorize(holder, "lin", left, right, dense.bias.detach())
    fac = FactoredLinear.from_factors(left.float(), right.float(), dense.bias.detach(), torch.float32)
    x = torch.randn(5, 16)
    assert torch.allclose(fac(x), dense(x), atol=1e-5)
    assert fac.second.bias is not None and fac.first.bias is None  # bias kept on the second factor


def test_whitening_beats_plain_svd_on_activation_weighted_error():
    torch.manual_seed(0)
    m, n, k = 32, 48, 8
    w = torch.randn(m, n, dtype=torch.float64)
    mix = torch.randn(n, n, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)  # anisotropic inputs
    x = torch.randn(512, n, dtype=torch.float64) @ mix  # [N, n]
    chol, inv, _ = whitening(x.t() @ x)
    plain = torch.linalg.norm(x @ (w - torch.matmul(*truncated_factors(w, k))).t())
    white = torch.linalg.norm(x @ (w - torch.matmul(*whitened_factors(w, k, chol, inv))).t())
    assert white < 0.9 * plain


def test_whitening_shifts_a_singular_gram():
    x = torch.randn(3, 6, dtype=torch.float64)  # rank 3 < 6: not positive definite
    chol, inv, shifted = whitening((x.t() @ x).float())
    assert shifted and torch.isfinite(chol).all() and torch.allclose(chol @ inv, torch.eye(6, dtype=torch.float64), atol=1e-6)


def test_rank_rule_and_dense_fallback():
    assert keep_rank(64, 64, 0.8) == 25  # floor(0.8 · 4096 / 128)
    assert keep_rank(1536, 576, 0.8) == int(0.8 * 1536 * 576 / 2112)
    assert keep_rank(64, 64, 1.0) is None  # k = m·n/(m+n) saves nothing: stays dense
    assert keep_rank(8, 8, 0.1) is None  # k = 0


@pytest.mark.parametrize("ratio", [0.1, 0.4])
def test_svd_parameter_counts_follow_the_formula(tiny_bundle, ratio):
    bundle = tiny_bundle("tiny-llama")
    shapes = {n: tuple(m.weight.shape) for n, m in bundle.adapter.linear_paths(bundle.model).items()}
    report = compress(SVD(SVDConfig(ratio=ratio)), bundle, None)
    expected = 0
    for name, (m, n) in shapes.items():
        k = keep_rank(m, n, 1 - ratio)
        module = bundle.model.get_submodule(name)
        assert isinstance(module, FactoredLinear) and module.rank == k
        expected += k * (m + n)
    assert report.linear_params_after == expected
    assert report.execution_path == "low-rank"
    assert report.params_after == sum(p.numel() for p in bundle.model.parameters())
    assert report.params_before - report.params_after == report.linear_params_before - expected
    assert bundle.adapter.tied_embeddings(bundle.model)  # embeddings and lm_head untouched, still tied
    assert torch.isfinite(_logits(bundle)).all()


def test_svd_llm_uses_dense_grams_and_finite_outputs(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    result = SVDLLM(SVDLLMConfig(ratio=0.2)).apply(bundle, _calib(bundle, text_dir))
    assert result.execution_path == "low-rank" and result.details["gram_tokens"] == 2 * 32
    assert len(result.layers) == 14 and not result.details["dense_layers"]
    assert torch.isfinite(_logits(bundle)).all()


def test_svd_llm_lowers_the_layer_output_error_of_svd_on_a_real_layer(tiny_bundle, text_dir):
    from slimbench.methods.lowrank.svd_llm import collect_grams

    bundle = tiny_bundle("tiny-llama")
    grams = collect_grams(bundle, _calib(bundle, text_dir, n=4, seqlen=64))
    w = bundle.model.model.layers[1].mlp.down_proj.weight.detach().double()  # [64, 128]
    gram = grams[1]["down"].gram.double()
    chol, inv, _ = whitening(gram)
    k = keep_rank(*w.shape, 0.6)

    def act_err(left, right):  # ||X (W − W')ᵀ||_F² = tr(D G Dᵀ)
        d = w - left @ right
        return torch.trace(d @ gram @ d.t())

    assert act_err(*whitened_factors(w, k, chol, inv)) < act_err(*truncated_factors(w, k))


def test_fwsvd_fisher_and_weighted_error(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    calib = _calib(bundle, text_dir)
    fisher = fisher_rows(bundle, CalibrationEngine(bundle, calib, progress=False))
    assert all(p.grad is None for p in bundle.model.parameters())
    name = "model.layers.0.mlp.up_proj"
    f = fisher[name]
    assert f.shape == (64,) and (f >= 0).all() and f.sum() > 0
    w = bundle.model.get_submodule(name).weight.detach().double()
    s = (f / f.max() + 1e-6).sqrt()
    k = keep_rank(*w.shape, 0.5)
    weighted = lambda l, r: torch.linalg.norm((w - l @ r) * s)  # noqa: E731
    assert weighted(*column_scaled_factors(w, k, s)) <= weighted(*truncated_factors(w, k)) + 1e-9
    result = FWSVD(FWSVDConfig(ratio=0.2)).apply(bundle, calib)
    assert len(result.layers) == 14 and torch.isfinite(_logits(bundle)).all()


def test_asvd_binary_search_follows_the_reference():
    numel = {"a": 100, "b": 100, "c": 100}
    table = {"a": {0.4: 90.0, 0.8: 80.0}, "b": {0.4: 30.0, 0.8: 10.0}, "c": {0.4: 40.0, 0.8: 20.0}}
    # by ppl, descending: a.4 a.8 c.4 b.4 c.8 b.8; low=0 high=5
    # mid=2 -> kept 0.6 <= 0.6: low=3; mid=4 -> 0.867: high=4; mid=3 -> 0.733: high=3; stop
    keeps, search = binary_search(table, numel, target_keep=0.6)
    assert keeps == {"a": 1.0, "b": 0.4, "c": 0.8}  # the most sensitive layer stays dense
    assert search["cut"] == 3 and search["search_keep"] == pytest.approx(2.2 / 3)  # the reference's last mid
    keeps, _ = binary_search({"a": table["a"], "b": table["b"]}, {"a": 100, "b": 100}, target_keep=0.8)
    assert keeps == {"a": 1.0, "b": 0.4}  # mid=1 -> 0.6: low=2; mid=2 -> 0.7: low=3; stop at mid=2


def test_asvd_sensitivity_allocation_leaves_unselected_layers_dense(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    cfg = ASVDConfig(ratio=0.1, candidates=(0.6, 0.8), sensitivity_samples=1, sensitivity_seqlen=16)
    result = ASVD(cfg).apply(bundle, _calib(bundle, text_dir))
    det = result.details
    assert len(det["sensitivity_ppl"]) == 14 and det["dense_layers"]
    for name in det["dense_layers"]:
        assert isinstance(bundle.model.get_submodule(name), torch.nn.Linear)
        assert det["layer_keep"][name] == 1.0
    for layer in result.layers:
        assert bundle.model.get_submodule(layer.name).rank == layer.rank and layer.change == "factored"
    assert torch.isfinite(_logits(bundle)).all()


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_suffix_objective_equals_the_whole_model_objective(tiny_bundle, text_dir, model):
    """ASVD's shortcut: the objective from block b on (kept dense inputs) is the whole-model one, bitwise,
    with a changed layer in block b as with the dense model."""
    from slimbench.calibration import SuffixObjective
    from slimbench.methods.lowrank.common import decoder_linears, install
    from slimbench.models.adapters import set_path

    bundle = tiny_bundle(model)
    calib = _calib(bundle, text_dir, n=2, seqlen=24)
    engine, windows = CalibrationEngine(bundle, calib, progress=False), list(calib.samples())
    suffix = SuffixObjective(bundle, windows)
    assert suffix.available
    targets = {t.block: t for t in decoder_linears(bundle.model, bundle.adapter) if t.role in ("o", "down")}
    for b in range(len(bundle.adapter.get_blocks(bundle.model))):
        while suffix.block < b:
            suffix.advance()
        dense = suffix.score()
        assert torch.equal(dense, engine.objective(windows))
        t, block = targets[b], bundle.adapter.get_blocks(bundle.model)[b]
        install(bundle.model, bundle.adapter, t, *truncated_factors(t.module.weight.detach().double(), 2))
        changed = suffix.score()
        assert torch.equal(changed, engine.objective(windows)) and not torch.equal(changed, dense)
        set_path(block, t.path, t.module)  # restore the dense layer


def test_asvd_uniform_allocation(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    result = ASVD(ASVDConfig(ratio=0.2, allocation="uniform")).apply(bundle, _calib(bundle, text_dir))
    assert set(result.details["layer_keep"].values()) == {0.8} and len(result.layers) == 14


@pytest.mark.parametrize("cls,kwargs,match", [
    (SVDConfig, {"ratio": 0.0}, "ratio"),
    (SVDLLMConfig, {"ratio": 1.0}, "ratio"),
    (FWSVDConfig, {"ratio": -0.2}, "ratio"),
    (ASVDConfig, {"allocation": "greedy"}, "allocation"),
    (ASVDConfig, {"candidates": [1.2]}, "candidates"),
    (ASVDConfig, {"sensitivity_samples": 0}, "sensitivity_samples"),
])
def test_bad_configs(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_factored_model_saves_and_reloads_without_a_dense_model(tiny_bundle, tmp_path):
    import json

    from slimbench.checkpoint import load_pretrained, save_pretrained

    bundle = tiny_bundle("tiny-llama")
    SVD(SVDConfig(ratio=0.3)).apply(bundle, None)
    expected = _logits(bundle)
    saved = save_pretrained(bundle, tmp_path / "ckpt")
    assert saved.format == "slimbench"
    modules = json.loads((tmp_path / "ckpt" / "slimbench.json").read_text())["modules"]
    assert {m["type"] for m in modules.values()} == {"factored"} and len(modules) == 14
    assert modules["model.layers.0.mlp.down_proj"]["rank"] == keep_rank(64, 128, 0.7)
    torch.manual_seed(123)  # the skeleton's random init must not leak into the loaded weights
    model = load_pretrained(tmp_path / "ckpt")
    bundle.model, reloaded = model, bundle.model
    assert torch.equal(_logits(bundle), expected)
    assert bundle.adapter.tied_embeddings(model)
    assert footprint(model, bundle.adapter).params == footprint(reloaded, bundle.adapter).params
