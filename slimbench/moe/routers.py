"""Routers of a MoEfied FFN: which experts a token needs (MoEfication §5.2, adapted to SwiGLU §5.3).

Zhang et al., arXiv 2110.01786; reference ``moefication/utils.py::ParamCenter, MLPCenter``
(thunlp/MoEfication @ 5bcbbdb). Every router maps FFN inputs h [T, D] to scores [T, E]
(higher = more needed); the routing rules rank experts by them.

* ``SimilarityRouter`` (no training): expert centre c_i = mean of the expert's L2-normalised
  gate rows; score = −‖ĥ − c_i‖ with ĥ = h/‖h‖ (the reference's negative Euclidean distance).
  For SwiGLU the centre is taken in gate space: the gate's sign and size decide act(g), while
  |u| is symmetric in the sign of h·u and has no linear centre.
* ``MLPRouter`` (trained, ``train_mlp_router``): ``Linear(D→E)`` initialised to the centres,
  ``tanh``, ``Linear(E→E)`` initialised to the identity, no biases, on ĥ. Trained with
  BCE-with-logits to predict each expert's activation mass divided by the batch maximum:
  mass_i(h) = Σ_{j in expert i} |act(g_j)·u_j| (the SwiGLU analogue of the reference's sum of
  ReLU activations, §5.3), computed on the FFN's real input h. Adam lr 0.01, batch 512,
  30 epochs, first 90% of the tokens train, last 10% validate. Selection metric per epoch:
  the share of a token's total mass captured by the router's top ⌊0.2·E⌋ experts, averaged
  over tokens. Like MLPCenter, the checkpoint kept is the *second-best* validation epoch
  (``checkpoint="second_best"``; ``"best"`` keeps the best one).
* ``OracleRouter``: the true masses (computes every expert's gate/up: an upper bound, not a
  speedup).

Probabilities P for the top-p rule (``probabilities``): ``"mass"`` (default for routers that
predict masses: the oracle's masses, the MLP router's sigmoid outputs) normalises the
predicted masses to sum to 1; ``"softmax"`` (the similarity router's default, it predicts no
mass) is the softmax of the scores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.errors import ConfigError
from slimbench.hooks import FunctionHook
from slimbench.models.adapters import Adapter, get_path
from slimbench.moe.dispatch import SlicedExperts
from slimbench.moe.routing import normalise_mass


def gate_centres(experts: SlicedExperts) -> torch.Tensor:
    """Mean of each expert's L2-normalised gate rows: [E, D]."""
    return torch.stack([F.normalize(ex.gate_proj.weight.detach().float(), dim=1).mean(dim=0) for ex in experts.experts])


class SimilarityRouter(nn.Module):
    default_prob = "softmax"

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centres", centres.detach().clone())  # [E, D]

    @classmethod
    def from_experts(cls, experts: SlicedExperts) -> "SimilarityRouter":
        return cls(gate_centres(experts))

    def scores(self, h: torch.Tensor, experts: SlicedExperts) -> torch.Tensor:
        return -torch.cdist(F.normalize(h.float(), dim=-1), self.centres)  # [T, E]

    def mass(self, scores: torch.Tensor) -> torch.Tensor:
        raise ConfigError("the similarity router predicts no activation mass: use prob=softmax")


class MLPRouter(nn.Module):
    default_prob = "mass"

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        E, D = centres.shape
        self.proj = nn.Linear(D, E, bias=False)
        self.mix = nn.Linear(E, E, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(centres)
            self.mix.weight.copy_(torch.eye(E))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.tanh(self.proj(F.normalize(h.float(), dim=-1))))  # [T, E]

    def scores(self, h: torch.Tensor, experts: SlicedExperts) -> torch.Tensor:
        return self.logits(h)

    def mass(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores)  # predicted mass / batch max, in (0, 1)


class OracleRouter(nn.Module):
    default_prob = "mass"

    def scores(self, h: torch.Tensor, experts: SlicedExperts) -> torch.Tensor:
        return experts.activation_mass(h)  # [T, E], the true masses

    def mass(self, scores: torch.Tensor) -> torch.Tensor:
        return scores


PROBABILITIES = {
    "mass": lambda router, scores: normalise_mass(router.mass(scores)),
    "softmax": lambda router, scores: torch.softmax(scores, dim=-1),
}


def probabilities(router: nn.Module, scores: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    """P [T, E] from a router's scores; ``mode`` None picks the router's default."""
    mode = mode or router.default_prob
    if mode not in PROBABILITIES:
        raise ConfigError(f"unknown router probability {mode!r} (known: {', '.join(PROBABILITIES)})")
    return PROBABILITIES[mode](router, scores)


# -- training the MLP router ----------------------------------------------------------------------
@dataclass(frozen=True)
class RouterTrainConfig:
    lr: float = 0.01
    batch_size: int = 512
    epochs: int = 30
    select_fraction: float = 0.2  # selection metric: mass captured by the top ⌊0.2·E⌋ experts
    checkpoint: str = "second_best"  # MLPCenter's choice; or "best"
    seed: int = 0  # the per-epoch shuffles

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(f"router training needs lr > 0, batch_size >= 1, epochs >= 1; got {self.lr}, {self.batch_size}, {self.epochs}")
        if not 0 < self.select_fraction <= 1:
            raise ConfigError(f"select_fraction must be in (0, 1], got {self.select_fraction}")
        if self.checkpoint not in ("second_best", "best"):
            raise ConfigError(f"checkpoint must be 'second_best' or 'best', got {self.checkpoint!r}")


def activation_masses(experts: SlicedExperts, h: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """True per-expert masses of tokens h [N, D]: [N, E] (float32, no grad)."""
    with torch.no_grad():
        return torch.cat([experts.activation_mass(h[i : i + chunk]).float() for i in range(0, h.shape[0], chunk)])


def selection_metric(scores: torch.Tensor, masses: torch.Tensor, fraction: float = 0.2) -> float:
    """Mean share of each token's total mass held by its top ⌊fraction·E⌋ experts by ``scores``."""
    k = max(1, int(masses.shape[-1] * fraction))
    picked = masses.gather(-1, torch.topk(scores, k, dim=-1).indices).sum(-1)  # [N]
    total = masses.sum(-1)
    valid = total > 0  # the reference skips tokens with no mass
    return (picked[valid] / total[valid]).mean().item()


def split_train_val(n: int) -> int:
    """Tokens [0, n_train) train, the rest validate (the reference's ``N // 10 * 9``)."""
    return n // 10 * 9


def train_mlp_router(inputs: torch.Tensor, experts: SlicedExperts, cfg: RouterTrainConfig) -> tuple[MLPRouter, dict]:
    """Train one layer's MLP router on its FFN inputs [N, D]; returns it and a report."""
    h = inputs.float()
    masses = activation_masses(experts, h)  # [N, E]
    n_train = split_train_val(h.shape[0])
    if n_train < 1 or n_train == h.shape[0]:
        raise ConfigError(f"router training needs at least 10 tokens, got {h.shape[0]}")
    router = MLPRouter(gate_centres(experts))
    opt = torch.optim.Adam(router.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    val_h, val_m = h[n_train:], masses[n_train:]
    history, kept = [], []  # kept: up to two (metric, epoch, state), best first
    for epoch in range(cfg.epochs):
        for idx in torch.randperm(n_train, generator=gen).split(cfg.batch_size):
            target = masses[idx] / masses[idx].max()  # [B, E] in [0, 1]
            opt.zero_grad()
            loss = loss_fn(router.logits(h[idx]).flatten(), target.flatten())
            loss.backward()
            opt.step()
        with torch.no_grad():
            metric = selection_metric(router.logits(val_h), val_m, cfg.select_fraction)
        history.append(metric)
        if not kept or metric > kept[-1][0] or len(kept) < 2:
            kept = sorted(kept + [(metric, epoch, copy.deepcopy(router.state_dict()))], key=lambda t: -t[0])[:2]
    chosen = kept[1] if cfg.checkpoint == "second_best" and len(kept) > 1 else kept[0]
    router.load_state_dict(chosen[2])
    with torch.no_grad():
        similarity = selection_metric(SimilarityRouter.from_experts(experts).scores(val_h, experts), val_m, cfg.select_fraction)
        oracle = selection_metric(val_m, val_m, cfg.select_fraction)
    report = {
        "selection_metric": chosen[0],
        "epoch": chosen[1],
        "metric_per_epoch": history,
        "similarity_selection_metric": similarity,
        "oracle_selection_metric": oracle,
        "train_tokens": n_train,
        "val_tokens": h.shape[0] - n_train,
    }
    return router, report


# -- training data ---------------------------------------------------------------------------------
class FFNInputs:
    """Calibration observer: the inputs [N, D] of a block's MLP (the router's training data).

    Keeps at most ``max_tokens`` (the first ones seen). Fits ``CalibrationEngine.collect``.
    """

    input_only = True

    def __init__(self, max_tokens: int | None = None) -> None:
        self.max_tokens = max_tokens
        self.parts: list[torch.Tensor] = []
        self.count = 0

    def attach(self, block: nn.Module, adapter: Adapter, hooks) -> None:
        mlp = get_path(block, adapter.mlp)
        self.hooked = [mlp]
        hooks.add(f"moe/ffn-inputs/{id(self)}", mlp, FunctionHook(pre=self._observe))

    def _observe(self, module, args, kwargs) -> None:
        inp = args[0] if args else next(iter(kwargs.values()))
        x = inp.detach().reshape(-1, inp.shape[-1])  # [T, D]
        room = x.shape[0] if self.max_tokens is None else max(0, self.max_tokens - self.count)
        if room:
            self.parts.append(x[:room].cpu().clone())
            self.count += min(room, x.shape[0])

    def result(self) -> torch.Tensor:
        return torch.cat(self.parts)
