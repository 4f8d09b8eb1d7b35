"""MoEfication of SwiGLU decoders: each dense FFN becomes E equal experts plus a router.

Zhang et al., "MoEfication: Transformer Feed-forward Layers are Mixtures of Experts",
Findings of ACL 2022, arXiv 2110.01786; reference code thunlp/MoEfication @ 5bcbbdb
(``moefication/utils.py::ParamSplit``); METHODS-papers.md §5.1 and §5.3.

Algorithm (per decoder layer, the weights are unchanged, only regrouped):

1. Neuron vectors: for neuron j the L2-normalised concatenation of its normalised gate and up
   rows ``[ĝ_j; û_j]`` (``split="kmeans_gate_up"``, §5.3's suggestion for SwiGLU), or its
   normalised gate row alone (``"kmeans_gate"``, LLaMA-MoE's choice).
2. Balanced k-means on those vectors: ``KMeansConstrained(n_clusters=E, size_min=size_max=
   d_ff/E, random_state=0)``, as ParamSplit does; the labels give each neuron's expert.
   ``split="random"`` is the reference's RandomSplit baseline: neuron j goes to expert
   ⌊j / (d_ff/E)⌋ (contiguous blocks of the arbitrary neuron order).
3. Expert i with neurons S_i computes ``E_i(x) = W_down[:, S_i] (act(W_gate[S_i] x) ∘ W_up[S_i] x)``;
   Σ_i E_i(x) is the dense FFN exactly (a down-projection bias is added once, outside the experts).
4. ``MoEfiedMLP`` replaces the MLP module: its own routing is *all experts* (the dense
   function, up to float summation order); a routing rule (``forward_routed``) selects experts
   from its router's probabilities and only those run (grouped dispatch, experts summed with
   weight 1, §3.5). Counts of what ran accumulate in ``stats``.

Clustering is deterministic (fixed random_state); ``cluster_model`` returns the labels as one
tensor [layers, d_ff] so a caller can cache them (``slimbench.moe.cache``) by
(model identity, this config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimbench.errors import ConfigError
from slimbench.models.adapters import Adapter, get_path, set_path
from slimbench.moe.dispatch import DispatchCount, RoutingStats, SlicedExperts, grouped_dispatch
from slimbench.moe.routers import probabilities
from slimbench.moe.routing import Rule


def _vectors_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([F.normalize(gate, dim=1), F.normalize(up, dim=1)], dim=1), dim=1)  # [F, 2D]


def _vectors_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.normalize(gate, dim=1)  # [F, D]


def _balanced_kmeans(vectors: torch.Tensor, num_experts: int, seed: int) -> torch.Tensor:
    from k_means_constrained import KMeansConstrained

    size = vectors.shape[0] // num_experts
    km = KMeansConstrained(n_clusters=num_experts, size_min=size, size_max=size, random_state=seed)
    return torch.from_numpy(np.asarray(km.fit(vectors.double().numpy()).labels_, dtype=np.int64))  # [F]


# split name -> neuron vectors to cluster (None: the reference's random split)
SPLITS: dict[str, Callable | None] = {"kmeans_gate_up": _vectors_gate_up, "kmeans_gate": _vectors_gate, "random": None}


@dataclass(frozen=True)
class MoEficationConfig:
    num_experts: int = 16
    split: str = "kmeans_gate_up"
    seed: int = 0  # KMeansConstrained random_state (the reference's 0)

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r} (known: {', '.join(SPLITS)})")

    def check(self, adapter: Adapter, model_config) -> None:
        """Pre-load validation: a gated MLP with gate/up/down whose width E divides."""
        missing = [r for r in ("gate", "up", "down") if r not in adapter.linears]
        if adapter.mlp is None or missing:
            raise ConfigError(f"MoEfication needs a gated MLP (gate/up/down); the {adapter.family} adapter has no {'/'.join(missing) or 'mlp'}")
        d_ff = getattr(model_config, "intermediate_size", None)
        if d_ff is not None and d_ff % self.num_experts:
            raise ConfigError(f"num_experts={self.num_experts} does not divide the FFN width {d_ff}")


# -- clustering ------------------------------------------------------------------------------------
def cluster_neurons(gate: torch.Tensor, up: torch.Tensor, config: MoEficationConfig) -> torch.Tensor:
    """The expert of each neuron: labels [F] in 0..E-1, each expert holding exactly F/E neurons."""
    d_ff, E = gate.shape[0], config.num_experts
    if d_ff % E:
        raise ConfigError(f"num_experts={E} does not divide the FFN width {d_ff}")
    vectors = SPLITS[config.split]
    if vectors is None:
        return torch.arange(d_ff) // (d_ff // E)
    with torch.no_grad():
        return _balanced_kmeans(vectors(gate.float().cpu(), up.float().cpu()), E, config.seed)


def expert_groups(labels: torch.Tensor, num_experts: int) -> list[torch.Tensor]:
    """Neuron indices of each expert, ascending: E tensors of F/E indices."""
    return [torch.nonzero(labels == e).flatten() for e in range(num_experts)]


def _mlp_parts(block: nn.Module, adapter: Adapter) -> tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear, Callable]:
    linears = adapter.block_linears(block)
    mlp = get_path(block, adapter.mlp)
    act = getattr(mlp, "act_fn", None)
    if act is None or not all(r in linears for r in ("gate", "up", "down")):
        raise ConfigError(f"{adapter.family} MLP {type(mlp).__name__} is not a gated MLP with act_fn, gate, up and down")
    return mlp, linears["gate"], linears["up"], linears["down"], act


def cluster_model(model: nn.Module, adapter: Adapter, config: MoEficationConfig, n_jobs: int = 1) -> torch.Tensor:
    """Labels of every layer's neurons: [layers, d_ff] (deterministic; cache it).

    ``n_jobs`` > 1 clusters layers in parallel processes (same labels: each layer is independent).
    """
    from joblib import Parallel, delayed

    weights = []
    for block in adapter.get_blocks(model):
        _, gate, up, _, _ = _mlp_parts(block, adapter)
        weights.append((gate.weight.detach().cpu(), up.weight.detach().cpu()))
    labels = Parallel(n_jobs=n_jobs)(delayed(cluster_neurons)(g, u, config) for g, u in weights)
    return torch.stack(labels)


# -- the module ------------------------------------------------------------------------------------
class MoEfiedMLP(nn.Module):
    """A dense SwiGLU MLP as E experts + an optional router; its own routing is all experts."""

    def __init__(self, experts: SlicedExperts, labels: torch.Tensor, down_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.experts = experts
        self.num_experts = experts.num_experts
        self.labels = labels  # [d_ff] expert of each original neuron (not a parameter)
        self.down_bias = None if down_bias is None else nn.Parameter(down_bias.detach().clone(), requires_grad=False)
        self.router: nn.Module | None = None  # slimbench.moe.routers: scores(h, experts) -> [T, E]
        self.prob_mode: str | None = None  # None: the router's default (see routers.probabilities)
        self.stats = RoutingStats(self.num_experts)

    @classmethod
    def from_mlp(cls, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act_fn: Callable, labels: torch.Tensor) -> "MoEfiedMLP":
        E = int(labels.max()) + 1
        experts = SlicedExperts.from_dense(gate, up, down, expert_groups(labels, E), act_fn)
        return cls(experts, labels, down.bias)

    def probabilities(self, h: torch.Tensor) -> torch.Tensor:
        """The router's P [T, E] for tokens h [T, D]."""
        if self.router is None:
            raise ConfigError("this MoEfied MLP has no router: attach one before routing")
        return probabilities(self.router, self.router.scores(h, self.experts), self.prob_mode)

    def forward_selected(self, x: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, DispatchCount]:
        """The MLP on x [..., D] with the experts ``select(h [T, D]) -> mask [T, E]`` chooses (None: all
        experts), summed with weight 1 (§3.5); and what ran."""
        h = x.reshape(-1, x.shape[-1])  # [T, D]
        if select is None:
            mask = torch.ones(h.shape[0], self.num_experts, dtype=torch.bool, device=h.device)  # [T, E]
        else:
            mask = select(h)  # [T, E]
        out, count = grouped_dispatch(h, mask, self.experts)
        if self.down_bias is not None:
            out = out + self.down_bias
        return out.view_as(x), count

    def forward_routed(self, x: torch.Tensor, rule: Rule | None) -> torch.Tensor:
        """The MLP on x [..., D] with experts chosen by ``rule(P)`` of the attached router (None: all experts)."""
        out, count = self.forward_selected(x, None if rule is None else lambda h: rule(self.probabilities(h)))
        self.stats.add(count)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_routed(x, None)


def moefy(model: nn.Module, adapter: Adapter, labels: torch.Tensor) -> list[MoEfiedMLP]:
    """In place: replace every block's MLP by a MoEfiedMLP with the given labels [layers, d_ff]."""
    blocks = adapter.get_blocks(model)
    if labels.shape[0] != len(blocks):
        raise ValueError(f"labels for {labels.shape[0]} layers, model has {len(blocks)}")
    modules = []
    for block, layer_labels in zip(blocks, labels):
        _, gate, up, down, act = _mlp_parts(block, adapter)
        moe = MoEfiedMLP.from_mlp(gate, up, down, act, layer_labels)
        set_path(block, adapter.mlp, moe)
        modules.append(moe)
    return modules


def moefied_layers(model: nn.Module, adapter: Adapter) -> list[MoEfiedMLP]:
    """The MoEfied MLPs of a model, one per block (ConfigError when the model is not MoEfied)."""
    layers = [get_path(block, adapter.mlp) for block in adapter.get_blocks(model)]
    if not all(isinstance(m, MoEfiedMLP) for m in layers):
        raise ConfigError("the model's MLPs are not MoEfied (apply MoEfication first)")
    return layers
