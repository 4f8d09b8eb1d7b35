"""Samplers: the MNIST DiT's own schedule and update, DDIM/DDPM agreement, guidance, seeding."""

import math

import pytest
import torch

from slimbench.diffusion import NoiseSchedule, Sampler, SamplerConfig, respace, sample, trajectory
from slimbench.errors import ConfigError
from slimbench.models.dit import DiT, DiTConfig

T = 1000


def _training_chain():
    """The MNIST DiT's schedule as its own code builds it (float32 linspace, cumprod)."""
    betas = torch.linspace(0.0001, 0.02, T)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=-1)
    abar_prev = torch.cat((torch.tensor([1.0]), abar[:-1]), dim=-1)
    variance = (1 - alphas) * (1 - abar_prev) / (1 - abar)
    return betas, alphas, abar, variance


def gaussian_denoiser(mean_of_class, std: float):
    """The exact E[ε | x_t] when x_0 ~ N(mean_of_class(y), std²) per pixel (training schedule)."""
    abar = torch.cumprod(1 - torch.linspace(0.0001, 0.02, T, dtype=torch.float64), 0)

    def denoise(x, t, y):
        a = abar[t].view(-1, 1, 1, 1)
        m = mean_of_class(y).view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * m) / (a * std**2 + 1 - a)
        return eps.float()

    return denoise


def _toy(x, t, y):
    """A smooth, label- and time-dependent stand-in for a network."""
    return 0.5 * torch.tanh(x) + 0.01 * (t.float() / T).view(-1, 1, 1, 1) + 0.05 * y.float().view(-1, 1, 1, 1)


def test_training_schedule_is_the_mnist_dits_own():
    betas, _, abar, _ = _training_chain()
    assert torch.equal(NoiseSchedule().training_betas(), betas)
    full = respace(NoiseSchedule(), T, "linspace")
    assert torch.equal(full.timesteps, torch.arange(T))
    assert torch.equal(full.alphas_cumprod, torch.cumprod(1 - betas.double(), 0))  # float64 of the same betas
    torch.testing.assert_close(full.alphas_cumprod, abar.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(full.betas, betas.double(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_linspace_respacing_is_adms_and_keeps_alpha_bar(steps):
    chain = respace(NoiseSchedule(), steps, "linspace")
    stride = (T - 1) / (steps - 1)
    assert chain.timesteps.tolist() == [round(k * stride) for k in range(steps)]  # ADM space_timesteps(T, "S")
    _, _, abar, _ = _training_chain()
    torch.testing.assert_close(chain.alphas_cumprod, abar.double()[chain.timesteps], rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.cumprod(1 - chain.betas, 0), chain.alphas_cumprod, rtol=1e-12, atol=0)


def _native_diffusers_run(scheduler, denoise, labels, shape, seed, **step_kwargs):
    """diffusers' own sampling loop on the full 1000-step scheduler (no respacing of ours)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((labels.numel(), *shape), generator=gen)
    for t in scheduler.timesteps.tolist():
        eps = denoise(x, torch.full((labels.numel(),), t), labels)
        x = scheduler.step(eps, t, x, generator=gen, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("steps", [10, 50])
def test_respaced_ddim_equals_diffusers_ddim_where_its_step_rule_is_exact(steps):
    """With ``leading`` spacing and S dividing T, diffusers' DDIM jumps t -> t - T/S, the next
    kept timestep: there its native loop is the reference for our respaced chain."""
    from diffusers import DDIMScheduler

    native = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
    native.set_timesteps(steps)
    denoise = gaussian_denoiser(lambda y: 0.3 * y.double() - 0.3, 0.4)
    labels = torch.arange(6) % 3
    expected = _native_diffusers_run(native, denoise, labels, (1, 4, 4), seed=3, eta=0.0)
    ours = sample(denoise, SamplerConfig(name="ddim", steps=steps, spacing="leading", clamp_sample=False), labels,
                  (1, 4, 4), seed=3, batch_size=6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)  # float32 vs our float64 coefficients


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_respaced_ddpm_equals_diffusers_ddpm_for_any_spacing(spacing):
    """diffusers' DDPM steps to the previous kept timestep for every spacing rule."""
    from diffusers import DDPMScheduler

    native = DDPMScheduler(clip_sample=False, variance_type="fixed_small", timestep_spacing=spacing)
    native.set_timesteps(40)
    denoise = gaussian_denoiser(lambda y: 0.3 * y.double() - 0.3, 0.4)
    labels = torch.arange(6) % 3
    expected = _native_diffusers_run(native, denoise, labels, (1, 4, 4), seed=5)
    ours = sample(denoise, SamplerConfig(name="ddpm", steps=40, spacing=spacing, clamp_sample=False), labels,
                  (1, 4, 4), seed=5, batch_size=6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_ddpm_step_is_the_original_update_formula():
    """One step: ε-form posterior mean, variance β̃, then clamp (util/diffusion.py @ 2bb421f)."""
    _, alphas, abar, variance = _training_chain()
    sampler = Sampler(SamplerConfig(name="ddpm", steps=T, eta=None, clamp_sample=True))
    gen = torch.Generator().manual_seed(3)
    x, eps = torch.randn(4, 1, 8, 8, generator=gen) * 0.7, torch.randn(4, 1, 8, 8, generator=gen)
    for t in (999, 500, 37, 1, 0):
        ours = sampler.rule.step(sampler.scheduler, eps, t, x, torch.Generator().manual_seed(t), sampler.config)
        ours = ours.clamp(-1, 1)
        mean = 1 / alphas[t].sqrt() * (x - (1 - alphas[t]) / (1 - abar[t]).sqrt() * eps)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        original = (mean + noise * variance[t].sqrt() if t != 0 else mean).clamp(-1, 1)
        torch.testing.assert_close(ours, original, rtol=0, atol=1e-5)  # float32 rounding (x_0 form vs ε form)


def test_ddpm_run_equals_the_original_sampler_loop():
    _, alphas, abar, variance = _training_chain()
    labels = torch.tensor([0, 3, 7])
    ours = sample(_toy, SamplerConfig(name="ddpm", steps=T), labels, (1, 6, 6), seed=11, batch_size=8)
    gen = torch.Generator().manual_seed(11)  # the original loop, drawing in the same order
    x = torch.randn(3, 1, 6, 6, generator=gen)
    for time in range(T - 1, -1, -1):
        t = torch.full((3,), time)
        noise = _toy(x, t, labels)
        mean = 1 / alphas[time].sqrt() * (x - (1 - alphas[time]) / (1 - abar[time]).sqrt() * noise)
        x = mean + torch.randn(x.shape, generator=gen) * variance[time].sqrt() if time != 0 else mean
        x = x.clamp(-1.0, 1.0)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


def test_ddim_eta1_with_all_steps_is_ddpm():
    ddpm = Sampler(SamplerConfig(name="ddpm", steps=T, clamp_sample=False))
    ddim = Sampler(SamplerConfig(name="ddim", steps=T, eta=1.0, clamp_sample=False))
    gen = torch.Generator().manual_seed(5)
    x, eps = torch.randn(8, 1, 4, 4, generator=gen), torch.randn(8, 1, 4, 4, generator=gen)
    for t in (999, 700, 123, 2, 1):  # same noise draw -> same mean and variance
        a = ddpm.rule.step(ddpm.scheduler, eps, t, x, torch.Generator().manual_seed(t), ddpm.config)
        b = ddim.rule.step(ddim.scheduler, eps, t, x, torch.Generator().manual_seed(t), ddim.config)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # whole runs with one seed: the same images (both draw x_T, then one noise per step in order)
    labels = torch.arange(6) % 3
    denoise = gaussian_denoiser(lambda y: 0.2 * y.double() - 0.2, 0.3)
    runs = [sample(denoise, s.config, labels, (1, 4, 4), seed=2, batch_size=6) for s in (ddpm, ddim)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SamplerConfig(name="ddpm", steps=1000, clamp_sample=False),
        SamplerConfig(name="ddim", steps=1000, eta=1.0, clamp_sample=False),
        SamplerConfig(name="ddim", steps=1000, eta=0.0, clamp_sample=False),
        SamplerConfig(name="ddim", steps=200, spacing="leading", clamp_sample=False),
    ],
    ids=["ddpm1000", "ddim1000-eta1", "ddim1000-eta0", "ddim200-leading"],
)
def test_samplers_reproduce_gaussian_data(config):
    """With the exact denoiser of x_0 ~ N(m_y, 0.3²), samples have mean m_y and std 0.3.

    (Few-step samplers shrink the spread: measured std 0.27 at DDIM-50, 0.24 at DDIM-20.)"""
    means = torch.tensor([-0.4, 0.1, 0.5], dtype=torch.float64)
    labels = torch.arange(600) % 3
    images = sample(gaussian_denoiser(lambda y: means[y], 0.3), config, labels, (1, 4, 4), seed=0, batch_size=200)
    for c in range(3):
        pixels = images[labels == c].double().flatten()  # 3,200 values per class
        assert abs(pixels.mean().item() - means[c].item()) < 0.015
        assert abs(pixels.std().item() - 0.3) < 0.015


def test_same_seed_same_images_other_seed_other_images():
    config = SamplerConfig(name="ddpm", steps=30)
    labels = torch.arange(5)
    a = sample(_toy, config, labels, (1, 4, 4), seed=7, batch_size=2)
    b = sample(_toy, config, labels, (1, 4, 4), seed=7, batch_size=2)
    c = sample(_toy, config, labels, (1, 4, 4), seed=8, batch_size=2)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_tiny_dit_samples_are_seeded():
    torch.manual_seed(0)
    model = DiT(DiTConfig(img_size=8, emb_size=32, num_blocks=2, num_heads=2, head_dim=16, ffn_size=64)).eval()
    config = SamplerConfig(name="ddim", steps=5)
    labels = torch.arange(4)
    a = sample(model, config, labels, (1, 8, 8), seed=1, batch_size=3)
    b = sample(model, config, labels, (1, 8, 8), seed=1, batch_size=3)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.float32 and torch.equal(a, b) and a.abs().max() <= 1.0


def test_guidance_batches_both_halves_and_combines_them():
    calls = []

    def denoise(x, t, y):
        calls.append(y.clone())
        return _toy(x, t, y)

    scale, null = 2.5, 9
    labels = torch.tensor([1, 2, 3])
    guided = sample(denoise, SamplerConfig(name="ddim", steps=4, guidance=scale, null_class=null), labels, (1, 4, 4),
                    seed=0, batch_size=3)
    assert len(calls) == 4 and all(torch.equal(y, torch.tensor([1, 2, 3, null, null, null])) for y in calls)

    def combined(x, t, y):  # the same guidance, written out: ε_∅ + s·(ε_y − ε_∅)
        uncond = _toy(x, t, torch.full_like(y, null))
        return uncond + scale * (_toy(x, t, y) - uncond)

    manual = sample(combined, SamplerConfig(name="ddim", steps=4), labels, (1, 4, 4), seed=0, batch_size=3)
    torch.testing.assert_close(guided, manual, rtol=0, atol=1e-6)


def test_guidance_needs_a_null_class_the_mnist_dit_lacks():
    with pytest.raises(ConfigError, match="needs a null_class"):
        SamplerConfig(guidance=1.5)
    with pytest.raises(ConfigError, match="supports guidance 1.0 only"):
        SamplerConfig(guidance=0.0, null_class=10).check_labels(10)  # 10 classes, no null row
    SamplerConfig(guidance=1.5, null_class=1000).check_labels(1001)  # DiT-XL/2: null class 1000
    SamplerConfig(guidance=1.0).check_labels(10)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 1001}, "exceeds the 1000 training timesteps"),
        ({"name": "ddpn"}, "unknown sampler 'ddpn'.*did you mean 'ddpm'"),
        ({"guidance": -0.5}, "guidance must be >= 0"),
        ({"guidance": math.nan}, "guidance must be >= 0"),
        ({"name": "ddpm", "eta": 0.0}, "eta applies to the ddim sampler only"),
        ({"eta": 1.5}, r"eta must be in \[0, 1\]"),
        ({"spacing": "uniform"}, "unknown spacing 'uniform'"),
        ({"schedule": {"beta_shedule": "linear"}}, "schedule: unknown parameter 'beta_shedule'"),
        ({"clamp_sample": "yes"}, "clamp_sample must be true or false"),
    ],
)
def test_bad_sampler_config_is_a_one_line_config_error(params, message):
    with pytest.raises(ConfigError, match=message) as info:
        SamplerConfig(**params)
    assert "\n" not in str(info.value)


def test_trajectory_yields_the_denoiser_inputs_of_a_ddim_run():
    config = SamplerConfig(name="ddim", steps=10, guidance=2.0, null_class=10)
    labels = torch.arange(5)
    starts = []
    calls = list(trajectory(_toy, config, labels, (1, 4, 4), seed=4, batch_size=3, on_batch_start=lambda: starts.append(1)))
    assert len(calls) == 2 * 10 and len(starts) == 2  # two batches (3 + 2) of 10 steps
    kept = respace(config.schedule, 10, "linspace").timesteps.flip(0)
    assert [int(c.t[0]) for c in calls[:10]] == kept.tolist()
    assert calls[0].x.shape == (6, 1, 4, 4) and torch.equal(calls[0].y, torch.tensor([0, 1, 2, 10, 10, 10]))
    x_T = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(4))
    assert torch.equal(calls[0].x[:3], x_T) and torch.equal(calls[0].x[3:], x_T)


def test_on_batch_start_runs_before_each_batch():
    events = []
    sample(lambda x, t, y: events.append("call") or torch.zeros_like(x), SamplerConfig(steps=2), torch.arange(3),
           (1, 2, 2), seed=0, batch_size=2, on_batch_start=lambda: events.append("start"))
    assert events == ["start", "call", "call", "start", "call", "call"]
