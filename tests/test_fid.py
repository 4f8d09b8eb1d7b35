"""FID: the Fréchet distance, the MNIST classifier features and their cache, the evaluator."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file

from slimbench.data.mnist import MnistHalves, resolve_mnist_test, split_halves
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation import fid as fid_module
from slimbench.evaluation.features import mnist_clf
from slimbench.evaluation.features.mnist_clf import ClassifierRecipe, MnistClassifier, MnistClassifierFeatures
from slimbench.evaluation.fid import FIDConfig, FeatureStats, feature_stats, frechet_distance, to_8bit
from slimbench.run import plan_run, run_experiment

TINY_RECIPE = ClassifierRecipe(epochs=1, batch_size=100)


def _pytorch_fid_route(a: FeatureStats, b: FeatureStats) -> float:
    """The usual formula with scipy's sqrtm of the non-symmetric product, written out."""
    covmean = scipy.linalg.sqrtm(a.cov @ b.cov).real
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean))


def _random_features(n, d, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix) * scale + torch.randn(d, generator=gen)


def test_frechet_distance_of_a_set_to_itself_is_zero():
    stats = feature_stats(_random_features(400, 32, 0))
    assert abs(frechet_distance(stats, stats)) < 1e-9


def test_frechet_distance_matches_the_sqrtm_route():
    a, b = feature_stats(_random_features(500, 24, 1)), feature_stats(_random_features(500, 24, 2, scale=1.5))
    ours = frechet_distance(a, b)
    assert ours > 1.0
    assert ours == pytest.approx(_pytorch_fid_route(a, b), rel=1e-8)
    assert ours == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_with_singular_covariances_is_exact():
    """Diagonal Gaussians (some variances 0): d² = ‖Δμ‖² + Σ (σ_a − σ_b)²."""
    sa, sb = np.array([0.0, 1.0, 2.0, 0.0, 0.5]), np.array([0.0, 0.0, 1.0, 3.0, 0.5])
    ma, mb = np.arange(5.0), np.arange(5.0) + 0.1
    a, b = FeatureStats(ma, np.diag(sa**2), 10), FeatureStats(mb, np.diag(sb**2), 10)
    expected = 5 * 0.01 + ((sa - sb) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    # fewer samples than dimensions: a rank-deficient covariance against itself
    few = feature_stats(_random_features(10, 64, 3))
    assert np.linalg.matrix_rank(few.cov) < 64 and abs(frechet_distance(few, few)) < 1e-9


def test_non_finite_features_fail():
    with pytest.raises(ValueError, match="non-finite"):
        feature_stats(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_to_8bit_keeps_real_images_and_rounds_samples():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).float() / 127.5 - 1
    assert torch.equal(to_8bit(levels), levels)
    assert to_8bit(torch.tensor([1.7, -3.0, 0.0025])).tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)  # 127.82 -> level 128


@pytest.fixture(scope="module")
def halves(data_dir):
    return split_halves(resolve_mnist_test(data_dir))


def test_mnist_halves_are_a_fixed_disjoint_split(data_dir, halves):
    assert halves.train_images.shape == halves.heldout_images.shape == (5000, 1, 28, 28)
    assert halves.train_images.min() == -1.0 and halves.train_images.max() == 1.0
    again = split_halves(resolve_mnist_test(data_dir))
    assert torch.equal(again.heldout_images, halves.heldout_images)
    assert torch.bincount(halves.heldout_labels, minlength=10).min() > 400  # every digit in both halves
    train_rows = {bytes(x.numpy().tobytes()) for x in (halves.train_images[:300] * 127.5).round().to(torch.uint8)}
    held_rows = {bytes(x.numpy().tobytes()) for x in (halves.heldout_images * 127.5).round().to(torch.uint8)}
    assert len(train_rows & held_rows) <= 1  # disjoint images (MNIST has no near-exact duplicates)


def test_fid_grows_monotonically_with_added_noise(halves):
    torch.manual_seed(0)
    net = MnistClassifier().eval()  # random weights: any fixed feature map must show it
    clean = halves.heldout_images[:500]
    with torch.no_grad():
        reference = feature_stats(net.features(clean))
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
        fids = [frechet_distance(feature_stats(net.features((clean + s * noise).clamp(-1, 1))), reference)
                for s in (0.0, 0.05, 0.2, 0.5, 1.0)]
    assert abs(fids[0]) < 1e-9
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def _small_halves(halves, n=600):
    return MnistHalves(halves.train_images[:n], halves.train_labels[:n], halves.heldout_images[:n],
                       halves.heldout_labels[:n], halves.split_seed)


def test_classifier_cache_round_trips_and_is_verified(halves, tmp_path, monkeypatch):
    monkeypatch.setattr(MnistClassifierFeatures, "recipe", TINY_RECIPE)
    ctx = EvalContext(data_dir=None, device="cpu", seed=0, threads=1, cache_dir=tmp_path)
    data, fingerprint = _small_halves(halves), {"images_sha256": "test"}
    trained = MnistClassifierFeatures()
    trained.prepare(data, fingerprint, ctx)
    weights = next((tmp_path / "fid").glob("mnist_clf-*.safetensors"))
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert set(load_file(str(weights))) == set(MnistClassifier().state_dict())  # safetensors, no pickle
    assert sidecar["heldout_accuracy"] > 0.2 and sidecar["recipe"]["epochs"] == 1  # 1 epoch on 600 images

    calls = []
    real_train = mnist_clf.train_classifier
    monkeypatch.setattr(mnist_clf, "train_classifier", lambda *a: calls.append(1) or real_train(*a))
    cached = MnistClassifierFeatures()
    cached.prepare(data, fingerprint, ctx)
    assert calls == [] and cached.fingerprint() == trained.fingerprint()
    images = halves.heldout_images[:50]
    assert torch.equal(cached.features(images), trained.features(images))
    assert cached.features(images).shape == (50, 128)

    raw = bytearray(weights.read_bytes())  # a corrupted file is not used: trained again, rewritten
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    again = MnistClassifierFeatures()
    again.prepare(data, fingerprint, ctx)
    assert calls == [1] and again.fingerprint()["weights_sha256"] == trained.fingerprint()["weights_sha256"]
    assert json.loads(weights.with_suffix(".json").read_text())["file_sha256"] == sidecar["file_sha256"]

    other = MnistClassifierFeatures()  # another recipe is another cache entry
    monkeypatch.setattr(MnistClassifierFeatures, "recipe", ClassifierRecipe(epochs=1, batch_size=50))
    other.prepare(data, fingerprint, ctx)
    assert calls == [1, 1] and len(list((tmp_path / "fid").glob("mnist_clf-*.safetensors"))) == 2


@pytest.mark.parametrize(
    "params,message",
    [
        ({"extractor": "mnist_clff"}, "unknown feature extractor 'mnist_clff'.*did you mean 'mnist_clf'"),
        ({"extractor": "inception"}, "the inception extractor needs weights"),
        ({"weights": "/x.pth"}, "weights applies to inception only"),
        ({"num_samples": 1}, "num_samples must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"count_macs": "no"}, "count_macs must be true or false"),
        ({"sampler": {"steps": 0}}, "sampler: steps must be an integer >= 1"),
        ({"sampler": {"name": "euler"}}, "unknown sampler 'euler'"),
        ({"sampler": {"guidance": -1.0}}, "guidance must be >= 0"),
        ({"sampler": {"guidance": 3.0}}, "needs a null_class"),
    ],
)
def test_bad_fid_config_is_a_config_error(params, message):
    with pytest.raises(ConfigError, match=message):
        FIDConfig(**params)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (("model=tiny-llama", "eval=fid-quick"), "evaluator 'fid' does not support causal_lm models"),
        (("model=tiny-dit", "eval=fid-quick", "eval.evaluators.fid.sampler.steps=0"),
         "evaluator fid: sampler.steps must be an integer >= 1"),
        (("model=tiny-dit", "eval=fid-quick", "eval.evaluators.fid.sampler.guidance=4.0"),
         "guidance 4.0 needs a null_class"),
        (("model=tiny-dit", "eval=fid-quick", "eval.evaluators.fid.extractor=inception",
          "eval.evaluators.fid.weights=/nonexistent.pth"), "inception weights file '/nonexistent.pth' does not exist"),
    ],
)
def test_bad_fid_input_fails_before_weights_load(compose, overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        plan_run(compose(*overrides, real_data=True))  # the MNIST files exist: the error is the one named
    assert "\n" not in str(info.value)


def dit_macs_per_forward(c: dict) -> int:
    """The slimbench DiT's matmul/conv/attention MACs per image, written out from its architecture."""
    n, d, inner, f = (c["img_size"] // c["patch_size"]) ** 2, c["emb_size"], c["num_heads"] * c["head_dim"], c["ffn_size"]
    p = c["channels"] * c["patch_size"] ** 2
    block = 6 * d * d + 3 * n * d * inner + 2 * n * n * inner + n * inner * d + 2 * n * d * f  # adaLN, qkv, attn, o, ffn
    return c["num_blocks"] * block + 2 * d * d + n * p * p + n * p * d + n * d * p  # + time MLP, conv, patch emb, head


def test_macs_formula_matches_the_mnist_dit():
    from slimbench.evaluation.macs import count_macs
    from slimbench.models.dit import DiT, DiTConfig

    config = DiTConfig()
    x, t, y = torch.randn(3, 1, 28, 28), torch.full((3,), 10), torch.arange(3)
    with torch.no_grad():
        counted = count_macs(lambda: DiT(config).eval()(x, t, y))
    assert counted == 3 * dit_macs_per_forward(config.to_dict()) == 3 * 18_333_440


def test_fid_evaluator_runs_end_to_end_on_a_tiny_dit(compose, monkeypatch, halves):
    monkeypatch.setattr(MnistClassifierFeatures, "recipe", TINY_RECIPE)
    monkeypatch.setattr(fid_module, "split_halves", lambda ref: _small_halves(halves))  # 600 + 600 images
    cfg = compose("model=tiny-dit", "model.config.img_size=28", "eval=fid-quick", "eval.evaluators.fid.num_samples=40",
                  "eval.evaluators.fid.batch_size=16", "eval.evaluators.fid.sampler.steps=3",
                  "eval.evaluators.fid.real_floor=true", real_data=True)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    record = outcome.record.to_dict()
    metrics = {m["name"]: m["value"] for m in record["metrics"] if m["evaluator"] == "fid"}
    assert metrics["fid_mnist_clf"] > 0 and metrics["sample_ms_per_image"] > 0
    assert metrics["macs_per_image"] == 3 * dit_macs_per_forward(cfg["model"]["config"])  # 3 steps, no guidance
    protocol = record["protocols"]["fid"]
    assert protocol["num_samples"] == 40 and protocol["seed"] == 0 and protocol["sampler"]["steps"] == 3
    assert protocol["sampler"]["name"] == "ddim" and protocol["sampler"]["eta"] == 0.0 and protocol["guidance"] == 1.0
    assert protocol["extractor"]["name"] == "mnist_clf" and len(protocol["extractor"]["weights_sha256"]) == 64
    assert protocol["reference"]["count"] == 600 and protocol["reference"]["images_sha256"]
    # the FID of random-weight samples is far above the real-vs-real floor
    assert record["artifacts"]["fid"]["fid_real_floor_train_vs_heldout"] < metrics["fid_mnist_clf"]
    assert list((Path(cfg["paths"]["cache_dir"]) / "fid").glob("mnist_clf-*.safetensors"))


def test_fid_counts_the_computations_a_step_cache_skipped(compose, monkeypatch, halves):
    monkeypatch.setattr(MnistClassifierFeatures, "recipe", TINY_RECIPE)
    monkeypatch.setattr(fid_module, "split_halves", lambda ref: _small_halves(halves))
    cfg = compose("model=tiny-dit", "model.config.img_size=28", "eval=fid-quick", "eval.evaluators.fid.num_samples=20",
                  "eval.evaluators.fid.batch_size=10", "eval.evaluators.fid.sampler.steps=4", "method=fora", "method.interval=2", real_data=True)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    record = outcome.record.to_dict()
    metrics = {m["name"]: m["value"] for m in record["metrics"] if m["evaluator"] == "fid"}
    # chain i = 3, 2, 1, 0: FORA N = 2 computes at 3 (first), 2 and 0, skips at 1: a quarter of every branch's calls
    assert metrics["skipped_pct"] == 25.0
    assert record["artifacts"]["fid"]["hook_calls"] == {"skipped": 20 * 4, "computed": 20 * 4 * 3}  # 2 blocks x 2 branches
    assert metrics["macs_per_image"] < 4 * dit_macs_per_forward(cfg["model"]["config"])  # skipped work was not counted


def test_fid_on_the_wrong_image_shape_is_a_config_error(compose, monkeypatch):
    monkeypatch.setattr(MnistClassifierFeatures, "recipe", TINY_RECIPE)
    outcome = run_experiment(compose("model=tiny-dit", "eval=fid-quick", real_data=True))  # 8x8 images
    assert outcome.status == "failed"
    error = next(e for e in outcome.record.evaluator_errors if e["evaluator"] == "fid")
    assert error["type"] == "ConfigError" and "needs a model of (1, 28, 28) images" in error["message"]
