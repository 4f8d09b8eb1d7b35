"""SparseGPT and the shared Hessian helpers: masks, OBS reconstruction, wiring to the engine."""

import pytest
import torch

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.methods.hessian import dampen, hessian_from_gram, inverse_cholesky_upper, mark_dead_inputs, prepare_inverse
from slimbench.methods.pruning.masks import lowest_fraction_mask
from slimbench.methods.pruning.sparsegpt import SparseGPT, SparseGPTConfig, sparsegpt_prune
from slimbench.methods.pruning.wanda import wanda_score


def _correlated_layer(out=48, inp=256, tokens=2048, seed=0):
    """Inputs with correlated features and a few outlier channels (as LLM activations have)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, inp // 4, generator=g) @ torch.randn(inp // 4, inp, generator=g)  # rank-deficient mix
    x += 0.3 * torch.randn(tokens, inp, generator=g)
    x[:, :4] *= 8.0  # outlier features
    w = torch.randn(out, inp, generator=g)
    return x, w


def _prune(x, w, sparsity=0.5, nm=None, blocksize=128, percdamp=0.01):
    hinv, dead = prepare_inverse(hessian_from_gram(x.t() @ x, x.shape[0]), percdamp)
    return sparsegpt_prune(w.masked_fill(dead, 0.0), hinv, sparsity, nm, blocksize)[0]


def test_hessian_helpers_follow_the_reference_conventions():
    x = torch.randn(100, 6)
    x[:, 2] = 0.0  # a dead input
    h = hessian_from_gram(x.t() @ x, 100)
    torch.testing.assert_close(h, 2 / 100 * x.t() @ x)
    fixed, dead = mark_dead_inputs(h)
    assert dead.tolist() == [False, False, True, False, False, False] and fixed[2, 2] == 1 and h[2, 2] == 0
    damped = dampen(fixed, 0.01)
    torch.testing.assert_close(damped - fixed, 0.01 * fixed.diagonal().mean() * torch.eye(6))
    u = inverse_cholesky_upper(damped)
    assert torch.equal(u, u.triu())
    torch.testing.assert_close(u.t() @ u, torch.linalg.inv(damped), rtol=1e-4, atol=1e-5)  # H⁻¹ = UᵀU


def test_reconstruction_error_beats_magnitude_and_is_scale_free():
    x, w = _correlated_layer()
    pruned = _prune(x, w)
    magnitude = w.masked_fill(lowest_fraction_mask(w.abs(), 0.5, per_row=False), 0.0)
    wanda = w.masked_fill(lowest_fraction_mask(wanda_score(w, x.norm(dim=0)), 0.5, per_row=True), 0.0)
    err_sparsegpt, err_wanda, err_magnitude = ((x @ w.t() - x @ v.t()).norm() for v in (pruned, wanda, magnitude))
    assert err_sparsegpt < 0.6 * err_magnitude, (err_sparsegpt, err_magnitude)  # measured: 0.42
    assert err_sparsegpt < err_wanda < err_magnitude, (err_sparsegpt, err_wanda, err_magnitude)
    # H's scale (2/n per token or per sequence) cannot change the result
    hinv, _ = prepare_inverse(hessian_from_gram(x.t() @ x, 7), 0.01)
    torch.testing.assert_close(sparsegpt_prune(w, hinv, 0.5, None, 128)[0], pruned, rtol=1e-3, atol=1e-4)


def test_unstructured_mask_per_block_is_the_references_threshold():
    x, w = _correlated_layer(out=40, inp=256)
    pruned = _prune(x, w, sparsity=0.5)
    for start in (0, 128):  # two 128-column blocks, each: floor(0.5 · numel) + 1 zeros (`<=` threshold)
        block = pruned[:, start : start + 128]
        assert int((block == 0).sum()) == int(block.numel() * 0.5) + 1


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_pattern_and_lazy_updates_match_eager_updates(n, m):
    x, w = _correlated_layer(out=32, inp=256)
    lazy = _prune(x, w, sparsity=n / m, nm=(n, m), blocksize=128)
    eager = _prune(x, w, sparsity=n / m, nm=(n, m), blocksize=m)  # N:M masks do not depend on the block size
    assert ((lazy == 0).view(32, -1, m).sum(-1) == n).all()
    assert torch.equal(lazy == 0, eager == 0)
    torch.testing.assert_close(lazy, eager, rtol=1e-4, atol=1e-4)


def test_dead_inputs_are_zeroed_and_stay_finite():
    x, w = _correlated_layer(out=16, inp=64)
    x[:, 10] = 0.0
    pruned = _prune(x, w, sparsity=0.5)
    assert torch.isfinite(pruned).all() and (pruned[:, 10] == 0).all()


@pytest.fixture
def calibrated(tiny_bundle, text_dir):
    def make(model="tiny-llama"):
        bundle = tiny_bundle(model)
        ref = resolve_corpus("wikitext2", "validation", text_dir)
        return bundle, build_calibration_set(CalibConfig(nsamples=4, seqlen=48, seed=0), ref, bundle.tokenizer)

    return make


def _weights(bundle):
    return {n: bundle.adapter.weight_matrix(m).detach().clone() for n, m in bundle.adapter.linear_paths(bundle.model).items()}


def test_first_block_matches_a_direct_computation_on_captured_inputs(calibrated):
    bundle, calib = calibrated()
    q = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["q"]
    xs = []
    handle = q.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1]).clone()))
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
    handle.remove()
    expected = _prune(torch.cat(xs), q.weight.detach().clone())
    result = SparseGPT(SparseGPTConfig()).apply(bundle, calib)
    torch.testing.assert_close(q.weight.detach(), expected, rtol=1e-4, atol=1e-5)
    layer = next(x for x in result.layers if x.name == "model.layers.0.self_attn.q_proj")
    assert layer.extra["dead_inputs"] == 0 and layer.error > 0 and layer.error_kind == "obs error"


@pytest.mark.parametrize("true_sequential", [False, True])
def test_sparsegpt_on_a_model_unstructured(calibrated, true_sequential):
    bundle, calib = calibrated()
    original = _weights(bundle)
    SparseGPT(SparseGPTConfig(sparsity=0.5, true_sequential=true_sequential)).apply(bundle, calib)
    for name, w in _weights(bundle).items():
        assert int((w == 0).sum()) == int(w.numel() * 0.5) + 1, name  # in <= 128: one column block
        kept = w != 0
        assert not torch.equal(w[kept], original[name][kept])  # kept weights were updated


def test_sparsegpt_on_a_model_nm(calibrated):
    bundle, calib = calibrated("tiny-gemma3")
    SparseGPT(SparseGPTConfig(sparsity=0.5, pattern="2:4")).apply(bundle, calib)
    for w in _weights(bundle).values():
        assert ((w == 0).view(w.shape[0], -1, 4).sum(-1) == 2).all()


def test_sparsity_zero_leaves_the_weights_unchanged(calibrated):
    bundle, calib = calibrated()
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    SparseGPT(SparseGPTConfig(sparsity=0.0)).apply(bundle, calib)
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"pattern": "2:4", "sparsity": 0.25}, "fixes the sparsity at 0.5"),
        ({"blocksize": 0}, "blocksize must be >= 1"),
        ({"pattern": "4:8", "blocksize": 12}, "multiple of M=8"),
        ({"percdamp": 0.0}, r"percdamp must be in \(0, 1\]"),
    ],
)
def test_sparsegpt_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SparseGPTConfig(**{"sparsity": 0.5, **kwargs})
