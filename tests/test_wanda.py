"""Wanda on tiny models: exact patterns and the mask against a direct computation."""

import pytest
import torch

from slimbench.run import compress

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.methods.pruning.wanda import Wanda, WandaConfig, variant_mask


@pytest.fixture
def calibrated(tiny_bundle, text_dir):
    def make(model="tiny-llama", nsamples=4, seqlen=48):
        bundle = tiny_bundle(model)
        ref = resolve_corpus("wikitext2", "validation", text_dir)
        return bundle, build_calibration_set(CalibConfig(nsamples=nsamples, seqlen=seqlen, seed=0), ref, bundle.tokenizer)

    return make


def _weights(bundle):
    return {n: bundle.adapter.weight_matrix(m).detach().clone() for n, m in bundle.adapter.linear_paths(bundle.model).items()}


def _reference_wanda(bundle, calib, sparsity):
    """prune_wanda written plainly: per block, hook all linears, run the whole (partly pruned)
    model, score |W|·‖X_j‖₂ from the captured inputs, zero a stable-sorted per-row prefix."""
    adapter = bundle.adapter
    for block in adapter.get_blocks(bundle.model):
        linears = adapter.block_linears(block)
        xs = {role: [] for role in linears}
        handles = [m.register_forward_pre_hook(lambda mod, a, r=r: xs[r].append(a[0].reshape(-1, a[0].shape[-1]).clone())) for r, m in linears.items()]
        with torch.no_grad():
            for sample in calib.samples():
                bundle.model(**sample)
        for h in handles:
            h.remove()
        for role, module in linears.items():
            x = torch.cat(xs[role]).double()  # [tokens, in]
            norm = x.pow(2).sum(0).sqrt().float()  # ‖X_j‖₂
            w = module.weight.data
            score = w.abs() * norm.reshape(1, -1)
            k = int(w.shape[1] * sparsity)
            order = torch.argsort(score, dim=1, stable=True)[:, :k]
            w.scatter_(1, order, 0.0)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_wanda_mask_is_the_per_row_lowest_score_of_a_direct_computation(calibrated, model):
    bundle, calib = calibrated(model)
    reference, _ = calibrated(model)
    original = _weights(bundle)
    Wanda(WandaConfig(sparsity=0.5)).apply(bundle, calib)
    _reference_wanda(reference, calib, 0.5)
    got, want = _weights(bundle), _weights(reference)
    for name in got:
        assert torch.equal(got[name] == 0, want[name] == 0), name  # same mask in every block
        kept = got[name] != 0
        assert torch.equal(got[name][kept], original[name][kept])  # no weight update
    # the second block's mask depends on the pruned first block (error propagation)
    dense, _ = calibrated(model)
    dense_inputs_mask = _mask_from_dense_inputs(dense, calib)
    name = next(n for n in got if ".1." in n and n.endswith("down_proj"))
    assert not torch.equal(got[name] == 0, dense_inputs_mask[name])


def _mask_from_dense_inputs(bundle, calib):
    """Block-1 masks had every block seen the dense model's inputs (no propagation)."""
    adapter, xs = bundle.adapter, {}
    paths = adapter.linear_paths(bundle.model)
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: xs.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))) for n, m in paths.items()]
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
    for h in handles:
        h.remove()
    out = {}
    for name, module in paths.items():
        norm = torch.cat(xs[name]).double().pow(2).sum(0).sqrt().float()
        score = module.weight.abs() * norm
        order = torch.argsort(score, dim=1, stable=True)[:, : module.weight.shape[1] // 2]
        out[name] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
    return out


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_wanda_unstructured_sparsity_is_exact_per_row(calibrated, sparsity):
    bundle, calib = calibrated()
    report = compress(Wanda(WandaConfig(sparsity=sparsity)), bundle, calib)
    layers = {layer.name: layer for layer in report.stages[0].layers}
    for name, w in _weights(bundle).items():
        assert ((w == 0).sum(1) == int(w.shape[1] * sparsity)).all(), name
        assert layers[name].sparsity == pytest.approx(int(w.shape[1] * sparsity) / w.shape[1])  # the report's, measured
        assert layers[name].change == "pruned" and layers[name].params_after == layers[name].params_before
    assert report.execution_path == "masked-dense"


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_wanda_nm_pattern(calibrated, pattern, n, m):
    bundle, calib = calibrated()
    Wanda(WandaConfig(sparsity=n / m, pattern=pattern)).apply(bundle, calib)
    for w in _weights(bundle).values():
        assert ((w == 0).view(w.shape[0], -1, m).sum(-1) == n).all()


def test_wanda_variant_reaches_the_target_with_a_per_row_threshold():
    torch.manual_seed(0)
    score = torch.rand(64, 512) * torch.rand(1, 512) * 3  # column-scaled, like |W|·‖X‖
    mask, alpha = variant_mask(score, 0.5)
    assert abs(mask.float().mean().item() - 0.5) <= 0.0015
    assert 0.0 < alpha < 0.8
    pruned_max = score.masked_fill(~mask, float("-inf")).amax(1)
    kept_min = score.masked_fill(mask, float("inf")).amin(1)
    assert (pruned_max < kept_min).all()  # each row is cut at one threshold
    # each row's pruned scores sum to at most alpha times the row sum (the variant's rule)
    assert ((score * mask).sum(1) <= alpha * score.sum(1) + 1e-4).all()
    assert mask.sum(1).unique().numel() > 1  # unlike the default, rows differ in sparsity


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
        ({"pattern": "2:4", "sparsity": 0.3}, "fixes the sparsity at 0.5"),
        ({"pattern": "2:4", "use_variant": True}, "unstructured sparsity only"),
        ({"use_variant": "yes"}, "true or false"),
    ],
)
def test_wanda_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WandaConfig(**kwargs)
