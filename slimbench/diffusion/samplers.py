"""DDPM and DDIM sampling of a class-conditional ε-prediction model, seeded and batched.

The model is reached through ONE callable ``denoise_fn(x_t, t, y) -> ε`` (x_t [B, C, H, W],
t [B] long model timesteps, y [B] long labels), so that any wrapper (hooks, a model kind's I/O)
can stand in for it. Per sampling batch:

  1. x_T ~ N(0, I) from the run's ``torch.Generator`` (on the CPU, then moved: the same seed
     gives the same images on every device); ``on_batch_start()`` is called (runtime methods
     reset their caches there);
  2. for chain index i = S-1 .. 0 of the respaced chain (``schedule.respace``), with model
     timestep t_i:
     - ε = denoise_fn(x, t_i, y), called inside ``sampling_step(i, S)``: runtime hooks read
       ``current_step()`` to know where in the chain they are (caches reused across steps); with classifier-free guidance at scale s != 1 the
       conditional and unconditional halves run as one batch [x; x], [y; ∅] and
       ε = ε_∅ + s·(ε_y − ε_∅) (s = 0: unconditional; s = 1: no guidance, one half only);
     - x <- the diffusers scheduler's step on the respaced betas:
       DDPM (``DDPMScheduler``, posterior variance β̃ = "fixed_small", noise except at i = 0)
       or DDIM (``DDIMScheduler``, σ = η·sqrt(β̃), ᾱ_prev = 1 at i = 0);
       ``clip_sample`` clips the predicted x_0 to [-1, 1] (diffusers' option);
     - ``clamp_sample``: x <- clamp(x, -1, 1) after every step, as the MNIST DiT's own
       sampler does (Franfee/DM-DiT-DDPM-MNIST-class-cond-ImageGen @ 2bb421f,
       ``util/diffusion.py``: ε-form posterior mean, variance β̃, no noise at t = 0, the sample
       clamped every step, no x_0 clipping).

The MNIST DiT was trained without label dropout: it has 10 class embeddings and no null class,
so guidance there is only valid at scale 1 (off); DiT-XL/2's null class is index 1000.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from slimbench.configs import build_dataclass
from slimbench.diffusion.schedule import SPACINGS, NoiseSchedule, Respaced, respace
from slimbench.errors import ConfigError
from slimbench.registry import Registry

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "ddim"  # ddpm | ddim
    steps: int = 50
    eta: float | None = None  # ddim: σ = η·sqrt(β̃), null = 0 (deterministic); ddpm: must be null
    spacing: str = "linspace"  # leading | trailing | linspace (diffusers' rules; linspace = ADM/DiT respacing)
    guidance: float = 1.0  # classifier-free guidance scale; 1 = off
    null_class: int | None = None  # label index of the unconditional class (needed when guidance != 1)
    clamp_sample: bool = True  # clamp x to [-1, 1] after every step (the MNIST DiT's own sampler)
    clip_sample: bool = False  # clip the predicted x_0 to [-1, 1] (diffusers' clip_sample)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", build_dataclass(NoiseSchedule, self.schedule, owner="schedule"))
        if self.name not in SAMPLERS:
            raise ConfigError(SAMPLERS.unknown_message(self.name))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.steps > self.schedule.num_train_timesteps:
            raise ConfigError(f"steps {self.steps} exceeds the {self.schedule.num_train_timesteps} training timesteps")
        if self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r} (known: {', '.join(SPACINGS)})")
        SAMPLERS.get(self.name).check_eta(self.eta)
        if not self.guidance >= 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")
        if self.guided and self.null_class is None:
            raise ConfigError(
                f"guidance {self.guidance} needs a null_class (the unconditional label); "
                "a model trained without label dropout has none: use guidance 1.0"
            )
        for key in ("clamp_sample", "clip_sample"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    @property
    def effective_eta(self) -> float | None:
        return SAMPLERS.get(self.name).effective_eta(self.eta)

    def check_labels(self, label_rows: int) -> None:
        """``label_rows``: the model's label-embedding rows (classes, plus a null class if it has one)."""
        if self.guided and not 0 <= self.null_class < label_rows:
            raise ConfigError(
                f"guidance {self.guidance} needs a null class, but null_class {self.null_class} is not a label of this "
                f"model ({label_rows} label embeddings); this model supports guidance 1.0 only"
            )


# -- the two step rules ------------------------------------------------------------------------
SAMPLERS: Registry[type] = Registry("sampler")


@SAMPLERS.register("ddpm")
class DDPM:
    """Ancestral sampling (Ho et al. 2020) with the posterior variance β̃ ("fixed_small")."""

    @staticmethod
    def check_eta(eta: float | None) -> None:
        if eta is not None:
            raise ConfigError(f"eta applies to the ddim sampler only; ddpm needs eta null, got {eta}")

    @staticmethod
    def effective_eta(eta: float | None) -> None:
        return None

    @staticmethod
    def scheduler(chain: Respaced, config: SamplerConfig) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=chain.steps,
            trained_betas=chain.betas.tolist(),
            variance_type="fixed_small",
            clip_sample=config.clip_sample,
            prediction_type="epsilon",
            timestep_spacing="leading",
            steps_offset=0,
        )

    @staticmethod
    def step(scheduler, eps, index: int, x, generator, config: SamplerConfig) -> torch.Tensor:
        return scheduler.step(eps, index, x, generator=generator).prev_sample


@SAMPLERS.register("ddim")
class DDIM:
    """DDIM (Song et al. 2021): σ_i = η·sqrt(β̃_i); η = 0 is the deterministic sampler."""

    @staticmethod
    def check_eta(eta: float | None) -> None:
        if eta is not None and not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {eta}")

    @staticmethod
    def effective_eta(eta: float | None) -> float:
        return 0.0 if eta is None else float(eta)

    @staticmethod
    def scheduler(chain: Respaced, config: SamplerConfig) -> DDIMScheduler:
        return DDIMScheduler(
            num_train_timesteps=chain.steps,
            trained_betas=chain.betas.tolist(),
            clip_sample=config.clip_sample,
            set_alpha_to_one=True,
            prediction_type="epsilon",
            timestep_spacing="leading",
            steps_offset=0,
        )

    @staticmethod
    def step(scheduler, eps, index: int, x, generator, config: SamplerConfig) -> torch.Tensor:
        return scheduler.step(eps, index, x, eta=config.effective_eta, generator=generator).prev_sample


# -- where a sampling run is (read by runtime hooks) ----------------------------------------------
@dataclass(frozen=True)
class SamplingStep:
    index: int  # chain index i: S-1 at the first (noisiest) step .. 0 at the last
    steps: int  # S, the chain's length

    @property
    def order(self) -> int:
        """0 at the first step of the run, S-1 at the last."""
        return self.steps - 1 - self.index


_CURRENT_STEP: ContextVar[SamplingStep | None] = ContextVar("slimbench_sampling_step", default=None)


def current_step() -> SamplingStep | None:
    """The sampling step of the denoiser call in progress (None outside a sampler)."""
    return _CURRENT_STEP.get()


@contextlib.contextmanager
def sampling_step(index: int, steps: int) -> Iterator[SamplingStep]:
    """Denoiser calls inside the block run at chain index ``index`` of an S = ``steps`` chain."""
    token = _CURRENT_STEP.set(SamplingStep(index, steps))
    try:
        yield _CURRENT_STEP.get()
    finally:
        _CURRENT_STEP.reset(token)


# -- one sampling run ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiserCall:
    """Exactly what the denoiser received at one step (2B rows under guidance: [cond; uncond])."""

    x: torch.Tensor  # [B', C, H, W]
    t: torch.Tensor  # [B'] long, model timesteps
    y: torch.Tensor  # [B'] long


class Sampler:
    """A configured sampler: the respaced chain and its diffusers scheduler, built once."""

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config
        self.rule = SAMPLERS.get(config.name)
        self.chain = respace(config.schedule, config.steps, config.spacing)
        self.scheduler = self.rule.scheduler(self.chain, config)
        # the step coefficients from float64 ᾱ (0-dim tensors: the samples stay float32)
        self.scheduler.alphas_cumprod = self.chain.alphas_cumprod.clone()
        self.scheduler.set_timesteps(self.chain.steps)  # chain indices S-1 .. 0

    def steps(
        self, denoise_fn: DenoiseFn, noise: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> Iterator[tuple[DenoiserCall, torch.Tensor]]:
        """Run one batch from x_T = ``noise``; after each step yield (the denoiser's inputs, x)."""
        x = noise  # [B, C, H, W]
        for index in self.scheduler.timesteps.tolist():
            with torch.no_grad(), sampling_step(index, self.chain.steps):
                call = self._inputs(x, int(self.chain.timesteps[index]), labels)
                eps = self._guide(denoise_fn(call.x, call.t, call.y))  # [B, C, H, W]
                x = self.rule.step(self.scheduler, eps, index, x, generator, self.config)
                if self.config.clamp_sample:
                    x = x.clamp(-1.0, 1.0)
            yield call, x

    def sample_batch(
        self, denoise_fn: DenoiseFn, noise: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        x = noise
        for _, x in self.steps(denoise_fn, noise, labels, generator):
            pass
        return x

    def _inputs(self, x: torch.Tensor, t: int, labels: torch.Tensor) -> DenoiserCall:
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # [B]
        if not self.config.guided:
            return DenoiserCall(x, t_batch, labels)
        null = torch.full_like(labels, self.config.null_class)
        return DenoiserCall(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null]))

    def _guide(self, eps: torch.Tensor) -> torch.Tensor:
        if not self.config.guided:
            return eps
        cond, uncond = eps.chunk(2)
        return uncond + self.config.guidance * (cond - uncond)


def _batches(labels: torch.Tensor, image_shape: tuple[int, ...], seed: int, batch_size: int):
    """(labels, x_T) per batch, x_T drawn on the CPU from one generator seeded once."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, labels.numel(), batch_size):
        y = labels[start : start + batch_size]
        yield y, torch.randn((y.numel(), *image_shape), generator=generator, device="cpu"), generator


def sample(
    denoise_fn: DenoiseFn,
    config: SamplerConfig,
    labels: torch.Tensor,
    image_shape: tuple[int, ...],
    *,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    on_batch_start: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Images [N, C, H, W] (CPU, float32, unclamped unless ``clamp_sample``) for ``labels`` [N].

    Same seed, labels and batch size -> the same images (the generator is consumed in order).
    """
    sampler = Sampler(config)
    images = []
    for y, noise, generator in _batches(labels, image_shape, seed, batch_size):
        if on_batch_start is not None:
            on_batch_start()
        images.append(sampler.sample_batch(denoise_fn, noise.to(device), y.to(device), generator).cpu())
    return torch.cat(images)


def trajectory(
    denoise_fn: DenoiseFn,
    config: SamplerConfig,
    labels: torch.Tensor,
    image_shape: tuple[int, ...],
    *,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    on_batch_start: Callable[[], None] | None = None,
) -> Iterator[DenoiserCall]:
    """The denoiser inputs (x_t, t, y) of every step of a sampling run, in order (e.g. DiT
    calibration samples along a DDIM run); the run is the one ``sample`` would make."""
    sampler = Sampler(config)
    for y, noise, generator in _batches(labels, image_shape, seed, batch_size):
        if on_batch_start is not None:
            on_batch_start()
        for call, _ in sampler.steps(denoise_fn, noise.to(device), y.to(device), generator):
            yield call
