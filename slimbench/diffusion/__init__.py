"""Diffusion sampling: the training noise schedule, its respacing, DDPM/DDIM samplers."""

from slimbench.diffusion.samplers import (
    SAMPLERS,
    DenoiserCall,
    Sampler,
    SamplerConfig,
    SamplingStep,
    current_step,
    sample,
    sampling_step,
    trajectory,
)
from slimbench.diffusion.schedule import NoiseSchedule, Respaced, respace

__all__ = [
    "SAMPLERS",
    "DenoiserCall",
    "NoiseSchedule",
    "Respaced",
    "Sampler",
    "SamplerConfig",
    "SamplingStep",
    "current_step",
    "respace",
    "sample",
    "sampling_step",
    "trajectory",
]
