"""Grouped expert dispatch: an unselected expert does no work.

Given tokens x [T, D], a selection mask [T, E] and optional combination weights [T, E]:

1. list the (token, expert) pairs of the mask and group them by expert (one stable sort);
2. for each expert with at least one token: gather its tokens, run the expert once on them
   (one matmul chain), scale by the weights if any, scatter-add into the output;
3. count what was done: tokens per expert and experts per token (``DispatchCount``).

An expert that every token selected runs on x itself (no gather) and is added without a
scatter. There is no masked full-FFN simulation anywhere: compute scales with the number of
(token, expert) pairs selected.

Two expert storages share the dispatch through ``forward_expert(e, x_e)``:

* ``SlicedExperts``: one small SwiGLU module per expert, ``down(act(gate(x)) * up(x))`` with
  ``nn.Linear`` gate/up rows and down columns of the expert's neurons (a MoEfied dense FFN,
  METHODS-papers.md §5.3);
* ``FusedExperts``: the fused 3-D parameters of transformers-5 MoE experts (Mixtral, OLMoE,
  Qwen2-MoE, Qwen3-MoE): ``gate_up_proj [E, 2I, D]`` whose rows are [gate; up] (the output
  is chunked gate first), ``down_proj [E, D, I]``, ``act_fn`` on the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.errors import ConfigError
from slimbench.moe.routing import Rule, expert_weights


class ExpertBank(Protocol):
    num_experts: int

    def forward_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on its tokens x [n, D] -> [n, D]."""


# -- storage (a): MoEfied slices ----------------------------------------------------------------
class SwiGLUExpert(nn.Module):
    """One expert: ``down_proj(act(gate_proj(x)) * up_proj(x))`` (LlamaMLP's names)."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, act_fn: Callable) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = gate_proj, up_proj, down_proj, act_fn

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.gate_proj(x)) * self.up_proj(x)  # [n, I_e]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation(x))  # [n, D]


def _linear_slice(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    layer = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class SlicedExperts(nn.Module):
    """Storage (a): expert e owns the neurons ``groups[e]`` of a dense SwiGLU FFN."""

    def __init__(self, experts: list[SwiGLUExpert]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)

    @classmethod
    def from_dense(cls, gate: nn.Linear, up: nn.Linear, down: nn.Linear, groups: list[torch.Tensor], act_fn: Callable) -> "SlicedExperts":
        """Slice gate/up rows and down columns (down's bias, if any, is not an expert's: the caller adds it once)."""
        experts = []
        for idx in groups:  # neuron indices of one expert, ascending
            experts.append(
                SwiGLUExpert(
                    _linear_slice(gate.weight[idx], None if gate.bias is None else gate.bias[idx]),
                    _linear_slice(up.weight[idx], None if up.bias is None else up.bias[idx]),
                    _linear_slice(down.weight[:, idx], None),
                    act_fn,
                )
            )
        return cls(experts)

    def forward_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x)

    def activation_mass(self, x: torch.Tensor) -> torch.Tensor:
        """Per-expert activation mass Σ_{j in expert} |act(g_j)·u_j| of every token: [T, E]."""
        return torch.stack([expert.activation(x).abs().sum(dim=-1) for expert in self.experts], dim=-1)

    def params_per_expert(self) -> list[int]:
        return [sum(p.numel() for p in expert.parameters()) for expert in self.experts]


# -- storage (b): transformers-5 fused experts ----------------------------------------------------
class FusedExperts:
    """Storage (b): ``gate_up [E, 2I, D]`` ([gate; up] rows), ``down [E, D, I]``, ``act_fn`` on the gate.

    Holds references to the tensors (edits to the module's parameters are seen).
    """

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act_fn: Callable) -> None:
        if gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[0] != down.shape[0] or gate_up.shape[1] != 2 * down.shape[2]:
            raise ConfigError(f"fused experts need gate_up [E, 2I, D] and down [E, D, I], got {tuple(gate_up.shape)} and {tuple(down.shape)}")
        self.gate_up, self.down, self.act_fn = gate_up, down, act_fn
        self.num_experts = gate_up.shape[0]

    @classmethod
    def of(cls, experts: nn.Module) -> "FusedExperts":
        """The storage of a transformers experts module (refuses layouts it does not compute)."""
        layout = {
            "is_transposed": False,
            "is_concatenated": True,
            "has_bias": False,
            "has_gate": True,
            "has_post_expert_norm": False,
        }
        odd = [name for name, want in layout.items() if getattr(experts, name, want) != want]
        if odd:
            raise ConfigError(f"{type(experts).__name__}: unsupported fused-expert layout ({', '.join(odd)})")
        return cls(experts.gate_up_proj, experts.down_proj, experts.act_fn)

    def forward_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)  # [n, I] each
        return F.linear(self.act_fn(gate) * up, self.down[e])  # [n, D]

    def params_per_expert(self) -> list[int]:
        per = self.gate_up[0].numel() + self.down[0].numel()
        return [per] * self.num_experts


class UnfusedExperts(SlicedExperts):
    """Storage (b) made compressible: the fused experts of a trained MoE as one ``SwiGLUExpert``
    (``nn.Linear`` gate/up/down, copies of ``gate_up[e, :I]``, ``gate_up[e, I:]``, ``down[e]``) per
    expert, so that weight methods reach every expert through the adapter's expert roles and their
    calibration hooks see exactly the tokens routed to each expert. It is called like the
    transformers module it replaces: ``(hidden [T, D], top_k_index [T, k], top_k_weights [T, k])``,
    and computes the same sum through ``grouped_dispatch``."""

    @classmethod
    def from_fused(cls, module: nn.Module) -> "UnfusedExperts":
        fused = FusedExperts.of(module)
        inter = fused.down.shape[2]
        with torch.no_grad():
            experts = [
                SwiGLUExpert(
                    _linear_slice(fused.gate_up[e, :inter], None),  # [I, D]
                    _linear_slice(fused.gate_up[e, inter:], None),  # [I, D]
                    _linear_slice(fused.down[e], None),  # [D, I]
                    fused.act_fn,
                )
                for e in range(fused.num_experts)
            ]
        return cls(experts)

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        T, E = hidden.shape[0], self.num_experts
        mask = torch.zeros(T, E, dtype=torch.bool, device=hidden.device).scatter_(1, top_k_index, True)  # [T, E]
        weights = torch.zeros(T, E, dtype=top_k_weights.dtype, device=hidden.device).scatter_(1, top_k_index, top_k_weights)
        return grouped_dispatch(hidden, mask, self, weights)[0]  # [T, D]


# -- the dispatch ---------------------------------------------------------------------------------
@dataclass
class DispatchCount:
    """What one dispatch computed."""

    tokens_per_expert: torch.Tensor  # [E] long
    experts_per_token: torch.Tensor  # [T] long


def grouped_dispatch(
    x: torch.Tensor, mask: torch.Tensor, experts: ExpertBank, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, DispatchCount]:
    """Σ_e [mask_te] · w_te · expert_e(x_t) for every token t, running each selected expert once."""
    T, E = mask.shape
    if E != experts.num_experts or T != x.shape[0]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit {T} tokens x {experts.num_experts} experts")
    token, expert = mask.nonzero(as_tuple=True)  # pairs, sorted by token
    order = torch.argsort(expert, stable=True)  # group by expert; tokens stay ascending
    token, expert = token[order], expert[order]
    tokens_per_expert = torch.bincount(expert, minlength=E)  # [E]
    out = torch.zeros_like(x)  # [T, D]
    start = 0
    for e, n in enumerate(tokens_per_expert.tolist()):
        if n == 0:
            continue
        idx = token[start : start + n]  # [n]
        start += n
        everyone = n == T  # then idx == arange(T)
        y = experts.forward_expert(e, x if everyone else x.index_select(0, idx))  # [n, D]
        if weights is not None:
            y = y * weights[idx, e].unsqueeze(-1).to(y.dtype)
        if everyone:
            out += y
        else:
            out.index_add_(0, idx, y.to(out.dtype))
    return out, DispatchCount(tokens_per_expert, mask.sum(dim=-1))


def route_fused(
    h: torch.Tensor, router_logits: torch.Tensor, experts: FusedExperts, rule: Rule, renormalise: bool
) -> tuple[torch.Tensor, DispatchCount]:
    """A trained MoE's routed experts: P = softmax(logits) in float32, experts chosen by ``rule(P)``,
    weighted by P (renormalised over the chosen experts when ``renormalise``: the model's top-k convention;
    never for top-p). Shared experts are not included."""
    P = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    mask = rule(P)
    return grouped_dispatch(h, mask, experts, expert_weights(P, mask, renormalise))


def masked_reference(x: torch.Tensor, mask: torch.Tensor, experts: ExpertBank, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The masked full computation (every expert on every token, then masked): for tests only."""
    scale = mask.to(x.dtype) if weights is None else weights * mask  # [T, E]
    return sum(experts.forward_expert(e, x) * scale[:, e : e + 1] for e in range(experts.num_experts))


# -- counting -------------------------------------------------------------------------------------
class RoutingStats:
    """Accumulated dispatch counts of one MoE layer (reset per evaluation)."""

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.tokens_per_expert = torch.zeros(self.num_experts, dtype=torch.long)
        self.experts_per_token_hist = torch.zeros(self.num_experts + 1, dtype=torch.long)  # [k] = tokens with k experts

    def add(self, count: DispatchCount) -> None:
        self.tokens += int(count.experts_per_token.numel())
        self.tokens_per_expert += count.tokens_per_expert.cpu()
        self.experts_per_token_hist += torch.bincount(count.experts_per_token.cpu(), minlength=self.num_experts + 1)

    @property
    def expert_calls(self) -> int:
        """Σ over tokens of the experts each token used."""
        return int(self.tokens_per_expert.sum())

    @property
    def mean_active_experts(self) -> float:
        return self.expert_calls / self.tokens if self.tokens else float("nan")

    def counters(self) -> dict[str, int]:
        out = {"tokens": self.tokens, "expert_calls": self.expert_calls}
        out.update({f"tokens_with_{k}_experts": int(n) for k, n in enumerate(self.experts_per_token_hist.tolist()) if n})
        out.update({f"expert_{e}_tokens": int(n) for e, n in enumerate(self.tokens_per_expert.tolist())})
        return out
