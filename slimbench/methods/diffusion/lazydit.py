"""LazyDiT: Lazy Learning for the Acceleration of Diffusion Transformers (Shen et al., AAAI
2025, arXiv 2412.12444; code github.com/shawnricecake/lazydit @ 0c49526). Protocol:
shared/METHODS-papers.md §2.

Gates. One lazy layer w ∈ R^D (no bias, zero-initialised) per (block, branch ∈ {attn, mlp},
chain index i of the S-step DDIM chain). It reads the branch's modulated input Z [B, N, D]:
score = sigmoid(Σ_tokens Z·w) [B]; score ≥ 0.5 means compute (at initialisation every score
is exactly 0.5: nothing is skipped).

Training (§2.3; frozen model, only the gates learn), ``train_steps`` times:
  1. draw t = 2·randint(0, S//2) + 1 (odd chain indices only) and ``batch_size`` images of a
     pool of the model's own deterministic DDIM-S trajectories (x at chain index t, and the
     full model's DDIM step from it, x at t−1);
  2. the full model at (x_t, t) fills every branch cache with its pre-gate output;
  3. at (x_{t−1}, t−1): the full model's output is the target; the lazy model, in which every
     branch returns score·F(Z) + (1 − score)·cache, is the prediction;
  4. loss = MSE(prediction, target) + ρ·mean_b Σ_l score_attn + ρ·mean_b Σ_l score_mlp;
     AdamW (lr 1e-4, weight decay 0). Only the gates of even chain indices are ever trained:
     at most every other step can be skipped (the 50% cap of the paper's tables).

Inference (§2.2): at the first step, and wherever no cache exists, every branch computes. Else
per sample: compute where score ≥ threshold (refresh those rows of the cache), reuse the
cached pre-gate output elsewhere (the block applies the current gate); a branch whose rows all
skip is not called; in a mixed batch only the computing rows are. Caches are cleared per
sampling batch. Lazy ratio Γ = skipped / (computed + skipped) branch calls, counted.

What is learned is stored: the chosen gates (and the sweep's details) are kept as a checksummed
safetensors entry (``slimbench.statcache``, no pickle) under ``<cache_dir>/lazydit/``, keyed by
the model's identity and every setting that shapes training; a run with the same key loads them
instead of training, and its record says so (the entry's path and the original training time).

Laziness is steered by ρ only (threshold fixed). ``target``: train once per ρ of ``rho_grid``
and keep the gates whose lazy ratio, measured by sampling ``probe_images`` images, is closest
to the target (the paper's sweep, §2.4); the whole sweep is gate-training time.

Differences from the paper, by design: x_t comes from the model's own sampling trajectory
(data-free), not from q_sample of dataset images; the 10% label dropout to the null class
applies only where the model has a null class (``null_class``; the MNIST DiT has none).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.diffusion import SamplerConfig, current_step, sample, sampling_step
from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.diffusion.cache import BranchCache, branches, check_branches
from slimbench.params import check_params, param



@dataclass(frozen=True)
class LazyDiTConfig:
    steps: int = param(50, "S: the DDIM step count the gates are trained for (the sampler must use it)", ge=2)
    rho: float = param(1e-7, "penalty ratio ρ for attention and MLP alike (released default 1e-7)", ge=0)
    target: float | None = param(None, "lazy-ratio target: pick ρ from rho_grid by the measured ratio", ge=0, lt=1, nullable=True)
    rho_grid: tuple = param((1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2), "ρ values tried when target is set (the paper's range)")
    threshold: float = param(0.5, "compute where score >= threshold", gt=0, lt=1)
    train_steps: int = param(500, "optimizer steps", ge=1)
    batch_size: int = param(256, "images per training step (the paper's global batch)", ge=1)
    lr: float = param(1e-4, "AdamW learning rate (weight decay 0)", gt=0)
    images: int = param(256, "trajectories in the training pool (seeded noise, labels i mod K)", ge=1)
    probe_images: int = param(64, "images sampled to measure the lazy ratio of each ρ (target only)", ge=1)
    null_class: int | None = param(None, "label of the unconditional class: 10% label dropout in training", ge=0, nullable=True)
    seed: int = param(0, "seed of the trajectories, batches and label dropout")

    def __post_init__(self) -> None:
        if isinstance(self.rho_grid, list):
            object.__setattr__(self, "rho_grid", tuple(self.rho_grid))
        check_params(self)
        if not self.rho_grid or any(not isinstance(r, (int, float)) or isinstance(r, bool) or r < 0 for r in self.rho_grid):
            raise ConfigError(f"rho_grid must be a non-empty list of numbers >= 0, got {list(self.rho_grid)!r}")


class LazyGate(BranchCache):
    """One branch's gates [S, D] and cache. ``mode``: sample (§2.2), fill (compute, cache),
    full (compute, cache untouched), soft (training blend; scores kept for the penalty)."""

    def __init__(self, steps: int, dim: int, threshold: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(steps, dim, device=device))  # [S, D]
        self.threshold = threshold
        self.mode = "sample"
        self.scores: torch.Tensor | None = None  # [B], soft mode

    def score(self, z: torch.Tensor, index: int) -> torch.Tensor:
        return torch.sigmoid((z @ self.weight[index].to(z.dtype)).sum(dim=-1))  # [B, N] -> [B]

    def forward(self, module, call, z, *args, **kwargs):
        step = current_step()
        if self.mode == "full":
            return call(z, *args, **kwargs)
        if self.mode == "fill" or step is None or not self.holds(z):
            return self.compute(call, z, *args, **kwargs)
        if step.steps != self.weight.shape[0]:
            raise ConfigError(f"lazydit gates were trained for {self.weight.shape[0]} sampling steps, the sampler runs {step.steps}")
        score = self.score(z, step.index)  # [B]
        if self.mode == "soft":
            self.scores = score
            s = score.view(-1, *([1] * (z.dim() - 1)))
            return s * call(z, *args, **kwargs) + (1 - s) * self.cache
        compute = score >= self.threshold
        if bool(compute.all()):
            return self.compute(call, z, *args, **kwargs)
        if not bool(compute.any()):
            return self.reuse()
        return self.mixed(call, z, compute)


@register_method("lazydit", config=LazyDiTConfig, family="diffusion", sort="runtime", kinds=("diffusion",))
class LazyDiT(MethodBase):
    def check(self, adapter) -> None:
        check_branches(adapter, self.name)

    def apply(self, bundle, calib) -> MethodResult:
        with torch.device(next(bundle.model.parameters()).device):  # the schedules' tensors where the model is
            return self._apply(bundle)

    def _apply(self, bundle) -> MethodResult:
        cfg = self.config
        entry = _gate_entry(bundle, cfg)
        gates = self._install(bundle)
        stored = _load_gates(entry, cfg)
        if stored is not None:
            with torch.no_grad():
                for name, gate in gates.items():
                    gate.weight.copy_(stored["gates"][name].to(gate.weight.device))
            return MethodResult("cached-steps", details={**stored["details"], "gates_entry": str(entry), "gates_from_cache": True},
                                notes=[f"gates read from {entry} (trained earlier in {stored['details']['gate_training_s']} s, "
                                       "which this run's compression time does not include)"])
        start = time.perf_counter()
        pool = _trajectory_pool(bundle, cfg)
        rhos = cfg.rho_grid if cfg.target is not None else (cfg.rho,)
        sweep = []
        for rho in rhos:
            _zero(gates)
            losses = _train(bundle, gates, pool, cfg, rho)
            ratio = _probe_ratio(bundle, gates, cfg) if cfg.target is not None else None
            sweep.append({"rho": rho, "final_loss": losses[-1], "probe_lazy_ratio": ratio,
                          "state": [g.weight.detach().clone() for g in gates.values()]})
        best = min(sweep, key=lambda r: abs(r["probe_lazy_ratio"] - cfg.target)) if cfg.target is not None else sweep[0]
        with torch.no_grad():
            for gate, w in zip(gates.values(), best.pop("state")):
                gate.weight.copy_(w)
        for r in sweep:
            r.pop("state", None)
        details = {
            "rho": best["rho"], "target": cfg.target, "sweep": sweep, "gate_training_s": round(time.perf_counter() - start, 3),
            "trained_chain_indices": list(range(0, 2 * (cfg.steps // 2), 2)),
            "gate_parameters": sum(g.weight.numel() for g in gates.values()),
        }
        if entry is not None:
            _store_gates(entry, cfg, gates, details)
            details["gates_entry"] = str(entry)
        return MethodResult("cached-steps", details=details,
                            notes=["gates trained on the model's own DDIM trajectories (data-free), lazy ratio counted when sampling"])

    def _install(self, bundle) -> dict[str, LazyGate]:
        dim = getattr(bundle.model.config, bundle.adapter.hidden_attr)
        device = next(bundle.model.parameters()).device
        return {name: bundle.hooks.add(f"lazydit/{name}", module, LazyGate(self.config.steps, dim, self.config.threshold, device))
                for name, module in branches(bundle)}


# -- what is learned, stored --------------------------------------------------------------------
def _gate_key(cfg: LazyDiTConfig) -> str:
    from slimbench.configs import config_to_dict

    return "lazydit-gates:" + json.dumps(config_to_dict(cfg), sort_keys=True, default=str)


def _gate_entry(bundle, cfg: LazyDiTConfig) -> Path | None:
    from slimbench.models.bundle import path_safe
    from slimbench.records import stable_hash

    if bundle.cache_dir is None:
        return None
    key = stable_hash({"model": bundle.source.to_dict(), "gates": _gate_key(cfg)})
    return Path(bundle.cache_dir) / "lazydit" / f"{path_safe(bundle.source.name)}-{key}"


def _load_gates(entry: Path | None, cfg: LazyDiTConfig) -> dict | None:
    from slimbench import statcache

    return None if entry is None else statcache.read(entry, _gate_key(cfg), "lazydit gates")


def _store_gates(entry: Path, cfg: LazyDiTConfig, gates: dict[str, "LazyGate"], details: dict) -> None:
    from slimbench import statcache

    statcache.write(entry, {"gates": {name: g.weight.detach().cpu().clone() for name, g in gates.items()}, "details": details},
                    _gate_key(cfg), "lazydit gates")


# -- training ------------------------------------------------------------------------------------
@dataclass
class _Pool:
    x: torch.Tensor  # [S, P, C, H, W]: x fed to the model at chain index S-1-k, k = 0..S-1
    y: torch.Tensor  # [P]
    timesteps: list[int]  # model timestep of chain index i


def _trajectory_pool(bundle, cfg: LazyDiTConfig) -> _Pool:
    calls = list(bundle.io.trajectory(bundle.model, cfg.images, cfg.steps, cfg.seed))  # k = 0..S-1
    x = torch.stack([c["x"] for c in calls])  # [S, P, C, H, W]
    timesteps = [int(c["t"][0]) for c in reversed(calls)]  # chain index i -> t_i
    return _Pool(x=x, y=calls[0]["y"], timesteps=timesteps)


def _zero(gates: dict[str, LazyGate]) -> None:
    with torch.no_grad():
        for gate in gates.values():
            gate.weight.zero_()


def _set_mode(gates: dict[str, LazyGate], mode: str) -> None:
    for gate in gates.values():
        gate.mode = mode


def _train(bundle, gates: dict[str, LazyGate], pool: _Pool, cfg: LazyDiTConfig, rho: float) -> list[float]:
    model, io, S = bundle.model, bundle.io, cfg.steps
    device = next(model.parameters()).device
    params = [g.weight for g in gates.values()]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    try:
        for _ in range(cfg.train_steps):
            t = 2 * int(torch.randint(0, S // 2, (1,), generator=gen, device="cpu")) + 1  # odd chain index: the full step
            rows = torch.randperm(pool.y.numel(), generator=gen, device="cpu")[: cfg.batch_size]
            y = _drop_labels(pool.y[rows], cfg, gen).to(device)
            x_t, x_next = pool.x[S - 1 - t, rows].to(device), pool.x[S - t, rows].to(device)  # chain t, t-1
            loss = _lazy_loss(io, model, gates, x_t, x_next, y, t, pool.timesteps, S, rho)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        _set_mode(gates, "sample")
        for p in frozen:
            p.requires_grad_(True)
        bundle.hooks.reset_state()
    return losses


def _lazy_loss(io, model, gates, x_t, x_next, y, t: int, timesteps: list[int], S: int, rho: float) -> torch.Tensor:
    def denoise(x, index):
        tt = torch.full((x.shape[0],), timesteps[index], dtype=torch.long, device=x.device)
        with sampling_step(index, S):
            return io.denoise(model, x, tt, y)  # [B, C, H, W]

    with torch.no_grad():
        _set_mode(gates, "fill")
        denoise(x_t, t)  # every branch caches its pre-gate output at chain index t
        _set_mode(gates, "full")
        target = denoise(x_next, t - 1)
    _set_mode(gates, "soft")
    pred = denoise(x_next, t - 1)
    penalty = sum(torch.stack([g.scores for name, g in gates.items() if name.endswith(kind)]).sum(0).mean() for kind in (".attn", ".mlp"))
    return F.mse_loss(pred, target) + rho * penalty


def _drop_labels(y: torch.Tensor, cfg: LazyDiTConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.null_class is None:
        return y
    drop = torch.rand(y.shape, generator=gen, device="cpu") < 0.1
    return torch.where(drop, torch.full_like(y, cfg.null_class), y)


def _probe_ratio(bundle, gates: dict[str, LazyGate], cfg: LazyDiTConfig) -> float:
    """Lazy ratio of a seeded sampling run of ``probe_images`` images with the trained gates."""
    before = _counts(gates)
    arch = bundle.model.config
    labels = torch.arange(cfg.probe_images, device="cpu") % arch.num_classes
    sample(lambda x, t, y: bundle.io.denoise(bundle.model, x, t, y), SamplerConfig(name="ddim", steps=cfg.steps, schedule=bundle.io.schedule),
           labels, (arch.channels, arch.img_size, arch.img_size), seed=cfg.seed + 1, batch_size=cfg.probe_images,
           device=next(bundle.model.parameters()).device, on_batch_start=bundle.hooks.reset_state)
    after = _counts(gates)
    skipped, computed = after[0] - before[0], after[1] - before[1]
    return skipped / max(1, skipped + computed)


def _counts(gates: dict[str, LazyGate]) -> tuple[int, int]:
    return sum(g.counters["skipped"] for g in gates.values()), sum(g.counters["computed"] for g in gates.values())
