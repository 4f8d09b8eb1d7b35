"""FID of a class-conditional diffusion model's samples (Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium").

Protocol:
  1. the reference set is the held-out half of the MNIST test set (``slimbench.data.mnist``,
     5,000 images, fixed split);
  2. ``num_samples`` images are sampled from the model with the configured sampler
     (``slimbench.diffusion``): labels y_i = i mod K over the K classes, x_T from one seeded
     generator, batches of ``batch_size``; the sampling wall time / N is the per-image latency;
  3. every image is clamped to [-1, 1] and rounded to 8-bit levels (what saving it as a PNG
     does; the real images are 8-bit already);
  4. an extractor (``slimbench.evaluation.features``) maps both sets to features; each set is
     summarised by the mean μ and the unbiased covariance Σ of its features;
  5. FID = ‖μ_g − μ_r‖² + tr Σ_g + tr Σ_r − 2 tr (Σ_g Σ_r)^{1/2}, reported as
     ``fid_<extractor>`` (``fid_mnist_clf``: slimbench's own MNIST classifier;
     ``fid_inception``: the standard FID Inception network from a user's weights file).

The trace term tr (Σ_g Σ_r)^{1/2} is the sum of the singular values of M = Σ_r^{1/2} Σ_g^{1/2}
(MᵀM = Σ_g^{1/2} Σ_r Σ_g^{1/2} has the eigenvalues of Σ_g Σ_r), with the PSD square roots
from symmetric eigendecompositions (round-off negative eigenvalues clipped to 0), in float64.
pytorch-fid takes ``scipy.linalg.sqrtm`` of the non-symmetric product Σ_g Σ_r instead, which
can return small imaginary parts (it drops them, or fails if they are large) and fails on
singular covariances (it then retries with 1e-6·I added to both). This route needs neither:
singular covariances (features that never fire, fewer samples than dimensions) are handled
without an offset, and no square root of a round-off eigenvalue enters the trace.

``count_macs`` adds ``macs_per_image``: the first sampling batch is run again (same seed, same
noise, ``on_batch_start`` before it) under ``slimbench.evaluation.macs.count_macs``, so the
MACs that really executed are counted (skipped work is not), apart from the timed run.

Runtime hooks (step caching) are reset (``bundle.hooks.reset_state()``) before every sampling
batch; where they count skipped and computed calls, ``skipped_pct`` is the share of skipped
computations in the timed run (counted: a skipped call never ran).

``real_floor`` adds the FID of the training half against the held-out half (real against
real: the floor of the metric at n = 5,000; the classifier has seen the training half, so it
is an optimistic floor) to the details.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from slimbench.configs import build_dataclass, config_to_dict
from slimbench.data.mnist import resolve_mnist_test, split_halves
from slimbench.diffusion import SamplerConfig, sample
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric
from slimbench.evaluation.features import FEATURES
from slimbench.evaluation.macs import count_macs

MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class FIDConfig:
    extractor: str = "mnist_clf"  # mnist_clf | inception
    weights: str | None = None  # inception: the FID Inception weights file
    num_samples: int = 5000
    batch_size: int = 500  # sampling batch
    seed: int | None = None  # sampling seed; null = the run's seed
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    real_floor: bool = True  # also FID(training half, held-out half) in the details
    count_macs: bool = True  # macs_per_image: the first batch re-run under a FLOP counter

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            object.__setattr__(self, "sampler", build_dataclass(SamplerConfig, self.sampler, owner="sampler"))
        if self.extractor not in FEATURES:
            raise ConfigError(FEATURES.unknown_message(self.extractor))
        FEATURES.get(self.extractor)(self.weights)  # validates the extractor's own settings
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise ConfigError(f"num_samples must be an integer >= 2, got {self.num_samples!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for key in ("real_floor", "count_macs"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")


# -- Fréchet distance of Gaussian feature statistics -------------------------------------------
@dataclass(frozen=True)
class FeatureStats:
    mean: np.ndarray  # [D] float64
    cov: np.ndarray  # [D, D] float64, unbiased
    count: int


def feature_stats(features: torch.Tensor) -> FeatureStats:
    x = features.double().cpu().numpy()  # [N, D]
    if not np.isfinite(x).all():
        raise ValueError("non-finite features")
    return FeatureStats(mean=x.mean(axis=0), cov=np.cov(x, rowvar=False), count=x.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh(matrix)  # symmetric: real eigenpairs
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """tr (Σ_a Σ_b)^{1/2}: the sum of the singular values of Σ_b^{1/2} Σ_a^{1/2}."""
    singular = np.linalg.svd(_psd_sqrt(cov_b) @ _psd_sqrt(cov_a), compute_uv=False)
    return float(singular.sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt_product(a.cov, b.cov))


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels of an 8-bit image (still in [-1, 1])."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


# -- the evaluator ----------------------------------------------------------------------------------
def _denoiser(bundle):
    """The model's ε(x_t, t, y), through the model kind's I/O."""
    return lambda x, t, y: bundle.io.denoise(bundle.model, x, t, y)


def skip_counts(bundle) -> tuple[int, int]:
    """(skipped, computed) calls counted so far by the runtime hooks that count them."""
    counters = bundle.hooks.counters().values()
    return sum(c.get("skipped", 0) for c in counters), sum(c.get("computed", 0) for c in counters)


@dataclass(frozen=True)
class ImageSpec:
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # labels sampled: 0..num_classes-1
    label_rows: int  # label embeddings, a null class included where the model has one


def _image_spec(bundle) -> ImageSpec:
    """The slimbench DiT's image shape and labels (10 classes, no null class for the MNIST DiT)."""
    arch = bundle.model.config
    return ImageSpec((arch.channels, arch.img_size, arch.img_size), arch.num_classes, arch.num_classes)


_REFERENCE_STATS: dict[str, FeatureStats] = {}  # per process: rows of a sweep share the held-out statistics


def _reference_stats(extractor, halves, data_fingerprint: dict) -> FeatureStats:
    import json

    images = halves.heldout_images
    key = json.dumps([extractor.fingerprint(), data_fingerprint, halves.split_seed, list(images.shape), float(images.double().sum())],
                     sort_keys=True, default=str)
    if key not in _REFERENCE_STATS:
        _REFERENCE_STATS[key] = feature_stats(extractor.features(halves.heldout_images))
    return _REFERENCE_STATS[key]


@EVALUATORS.register("fid")
class FID:
    name = "fid"
    version = "1"
    Config = FIDConfig
    kinds = ("diffusion",)

    def __init__(self, config: FIDConfig) -> None:
        self.config = config
        self.extractor = FEATURES.get(config.extractor)(config.weights)

    def check(self, ctx: EvalContext) -> dict:
        self._ref = resolve_mnist_test(ctx.data_dir)
        return {"mnist/test": self._ref.fingerprint(), **self.extractor.check(ctx)}

    def __call__(self, bundle, ctx: EvalContext) -> EvalResult:
        cfg = self.config
        spec = _image_spec(bundle)
        if spec.shape != MNIST_SHAPE:
            raise ConfigError(f"FID on MNIST needs a model of {MNIST_SHAPE} images, this one makes {spec.shape}")
        cfg.sampler.check_labels(spec.label_rows)
        ref = getattr(self, "_ref", None) or resolve_mnist_test(ctx.data_dir)
        halves = split_halves(ref)
        self.extractor.prepare(halves, ref.fingerprint(), ctx)
        reference = _reference_stats(self.extractor, halves, ref.fingerprint())

        seed = ctx.seed if cfg.seed is None else cfg.seed
        labels = torch.arange(cfg.num_samples) % spec.num_classes
        device = next(bundle.model.parameters()).device

        def run(batch_labels: torch.Tensor) -> torch.Tensor:  # on the CPU when it returns: device synchronised
            return sample(_denoiser(bundle), cfg.sampler, batch_labels, spec.shape, seed=seed, batch_size=cfg.batch_size,
                          device=device, on_batch_start=bundle.hooks.reset_state)  # runtime hooks: caches cleared per batch

        counts_before = skip_counts(bundle)
        start = time.perf_counter()
        images = run(labels)
        sampling_s = time.perf_counter() - start
        skipped, computed = (after - before for after, before in zip(skip_counts(bundle), counts_before))
        generated = feature_stats(self.extractor.features(to_8bit(images)))
        fid = frechet_distance(generated, reference)

        metrics = [
            Metric(f"fid_{self.extractor.name}", fid, higher_is_better=False),
            Metric("sample_ms_per_image", 1e3 * sampling_s / cfg.num_samples, higher_is_better=False, unit="ms"),
        ]
        if skipped + computed:  # runtime hooks that skip computation counted their calls
            metrics.append(Metric("skipped_pct", 100.0 * skipped / (skipped + computed), unit="%"))
        if cfg.count_macs:
            probe = labels[: cfg.batch_size]
            macs = count_macs(lambda: run(probe))
            metrics.append(Metric("macs_per_image", macs / probe.numel(), higher_is_better=False, unit="MACs"))
        details = {"sampling_s": round(sampling_s, 3), "extractor": self.extractor.report(),
                   "hook_calls": {"skipped": skipped, "computed": computed}}
        if cfg.real_floor:
            train = feature_stats(self.extractor.features(halves.train_images))
            details["fid_real_floor_train_vs_heldout"] = frechet_distance(train, reference)
        return EvalResult(metrics, self._protocol(seed, spec, ref, halves, ctx), details)

    def _protocol(self, seed: int, spec: ImageSpec, ref, halves, ctx: EvalContext) -> dict:
        cfg = self.config
        return {
            "num_samples": cfg.num_samples,
            "batch_size": cfg.batch_size,
            "seed": seed,
            "labels": f"y_i = i mod {spec.num_classes}",
            "sampler": {**config_to_dict(cfg.sampler), "eta": cfg.sampler.effective_eta},
            "guidance": cfg.sampler.guidance,
            "extractor": self.extractor.fingerprint(),
            "reference": {
                "set": "MNIST test, held-out half",
                "count": int(halves.heldout_images.shape[0]),
                "split_seed": halves.split_seed,
                **ref.fingerprint(),
            },
            "image_format": "clamped to [-1, 1], rounded to 8-bit levels",
            "statistics": "mean, unbiased covariance; trace term = nuclear norm of sqrt(cov_r) sqrt(cov_g)",
            "macs": "first batch re-run under FlopCounterMode (matmul/conv/attention, FLOPs/2)" if cfg.count_macs else None,
            "device": ctx.device,  # the latency metric depends on them
            "threads": torch.get_num_threads(),
        }
