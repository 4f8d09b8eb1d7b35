"""The training noise schedule of an ε-prediction diffusion model, and its respacing.

A model is trained on T steps with betas β_0..β_{T-1} (the MNIST DiT and DiT-XL/2: T = 1000,
linear 1e-4..0.02, ᾱ_t = Π_{s<=t} (1 - β_s), float32 as ``torch.linspace`` / ``torch.cumprod``
give them). Sampling with S < T steps keeps S of the training timesteps, chosen by diffusers'
spacing rule (``leading``, ``trailing`` or ``linspace``; ``DDPMScheduler.set_timesteps``), and
builds the respaced chain the way ADM / DiT's ``respace.py`` does: ᾱ'_i = ᾱ_{t_i} and
β'_i = 1 - ᾱ'_i / ᾱ'_{i-1} (ᾱ'_{-1} = 1). A diffusers scheduler built on the S betas β' then
steps index i -> i-1 exactly, while the model is called with the original timestep t_i.
ᾱ is kept in float64 (as ADM/DiT keep every coefficient): in float32, β_t recovered as
1 - ᾱ_t/ᾱ_{t-1} near t = 0 loses three digits to cancellation.
(diffusers' own DDIM step jumps to ``t - T // S``, which is not the next kept timestep under
``linspace``/``trailing`` spacing; ADM's ``"50"`` respacing, which DiT and LazyDiT sample
with, is diffusers' ``linspace`` rule.)

With S = T every timestep is kept: the chain is the training schedule (the MNIST DiT's own
float32 betas, ᾱ their float64 cumulative product).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from slimbench.errors import ConfigError

SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class NoiseSchedule:
    """What the model was trained with (defaults: the MNIST DiT, also DiT-XL/2's schedule)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"unknown beta_schedule {self.beta_schedule!r} (known: {', '.join(BETA_SCHEDULES)})")

    def training_betas(self) -> torch.Tensor:
        """β_0..β_{T-1} [T] float32, as diffusers (and the MNIST DiT's own code) build them."""
        return self._scheduler().betas

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t [T] float64 from the float32 betas (ADM/DiT keep their coefficients in float64)."""
        return torch.cumprod(1 - self.training_betas().double(), dim=0)

    def _scheduler(self, spacing: str = "leading") -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            timestep_spacing=spacing,
        )


@dataclass(frozen=True)
class Respaced:
    """A respaced chain: ``timesteps[i]`` is the model timestep of chain index i (ascending)."""

    timesteps: torch.Tensor  # [S] long, ascending original timesteps
    alphas_cumprod: torch.Tensor  # [S] float64, ᾱ'_i = ᾱ_{timesteps[i]}

    @property
    def steps(self) -> int:
        return self.timesteps.numel()

    @property
    def betas(self) -> torch.Tensor:
        """β'_i = 1 - ᾱ'_i / ᾱ'_{i-1} [S] float64 (ᾱ'_{-1} = 1)."""
        prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev


def respace(schedule: NoiseSchedule, steps: int, spacing: str) -> Respaced:
    """Keep ``steps`` training timesteps by diffusers' ``spacing`` rule; betas of the kept chain."""
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r} (known: {', '.join(SPACINGS)})")
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise ConfigError(f"steps must be in 1..{schedule.num_train_timesteps}, got {steps}")
    base = schedule._scheduler(spacing)
    base.set_timesteps(steps)
    kept = base.timesteps.flip(0).long()  # [S] ascending
    if kept.numel() != steps or bool((kept.diff() <= 0).any()):
        raise ConfigError(f"{spacing} spacing does not give {steps} distinct timesteps out of {schedule.num_train_timesteps}")
    return Respaced(timesteps=kept, alphas_cumprod=schedule.alphas_cumprod()[kept])
