"""Architecture adapters: where things are in one model family, as data.

Methods never write ``model.model.layers``; they ask the adapter for blocks, the linear
layers of a block by role, norms, embeddings and the attention geometry. An adapter is a
frozen table of attribute paths, registered under every ``config.model_type`` it serves.

Linear roles inside a block: ``q k v o`` (attention; ``qkv`` when fused), ``gate up down``
(MLP). Norm roles: ``attn_in`` (before attention), ``attn_out`` (on the attention output,
Gemma-3's sandwich norm), ``mlp_in`` (before the MLP), ``mlp_out``.

A linear replaced by two low-rank factors (``kernels.factored.FactoredLinear``) shows up as two
linears with the roles ``<role>.first`` and ``<role>.second``, so that later pipeline stages
(quantization) reach the factors; ``weight_matrix`` also reads packed (``QuantLinear``) and
factored modules. Which norm feeds which linears (``norm_feeds``) and AWQ's scale chains
(``scale_chains``) are tables here, not in the methods. ``io`` names how the model is called
(``slimbench.models.io``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimbench.registry import Registry


def get_path(root: nn.Module, path: str | None) -> Any:
    """``get_path(model, "model.layers")`` -> the attribute, or None when absent."""
    if not path:
        return None
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_path(root: nn.Module, path: str, value: Any) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_path(root, parent_path) if parent_path else root
    setattr(parent, name, value)


@dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts MLP in every block.

    ``trained``: a trained sparse MoE (router Linear; experts stored by transformers as fused 3-D
    parameters, unfused at load into one gate/up/down ``nn.Linear`` triple per expert,
    ``slimbench.moe.dispatch.UnfusedExperts``). Otherwise a MoEfied dense FFN
    (``slimbench.moe.moefication.MoEfiedMLP`` at ``block``: no router of its own). Either way the
    experts module at ``block.experts`` holds ``experts[e].{gate,up,down}_proj``: the adapter's
    expert roles ``gate[e]``, ``up[e]``, ``down[e]``.
    """

    block: str  # path inside a decoder block
    router: str  # path inside the MoE block ("" when there is none)
    experts: str  # path inside the MoE block
    trained: bool = True
    gate_up: str = "gate_up_proj"  # [E, 2*I, D] parameter of the experts module
    down: str = "down_proj"  # [E, D, I]
    num_experts_attr: str = "num_local_experts"
    top_k_attr: str = "num_experts_per_tok"
    shared_expert: str | None = None  # Qwen2-MoE: an always-on expert, scaled by sigmoid(shared_gate(h))
    shared_gate: str = "shared_expert_gate"


FACTOR_PARTS = ("first", "second")  # kernels.factored.FactoredLinear.factor_parts: in -> rank -> out
EXPERT_PARTS = ("gate", "up", "down")  # the linears of one expert: role ``<part>[<e>]``, module ``<part>_proj``
_EXPERT_ROLE = re.compile(r"^(gate|up|down)\[(\d+)\]$")


def expert_role(part: str, e: int) -> str:
    """The role of expert ``e``'s ``part`` linear (``gate[3]``)."""
    return f"{part}[{e}]"



@dataclass(frozen=True)
class ScaleChain:
    """AWQ: an op whose output feeds ``roles``; the scale search inspects ``inspect`` (a block
    sublayer ``attn``/``mlp`` or a linear role). ``needs_mha``: only when K/V heads equal the
    query heads (the v -> o fold needs v's output rows to match o's inputs)."""

    prev: str  # a norm role or a linear role
    roles: tuple[str, ...]
    inspect: str
    needs_mha: bool = False


@dataclass(frozen=True)
class Adapter:
    family: str
    blocks: str
    embed: str
    final_norm: str | None
    lm_head: str | None
    attn: str | None
    mlp: str | None
    linears: dict[str, str]
    norms: dict[str, str] = field(default_factory=dict)
    # roles that read the same input tensor (one set of input statistics serves the group)
    input_groups: tuple[tuple[str, ...], ...] = ()
    rotary: str | None = None
    moe: MoESpec | None = None
    # Conv1D (GPT-2) stores weight as [in, out]; everything else is nn.Linear [out, in].
    transposed_weights: bool = False
    # norms multiply by (offset + weight): 0 for Llama-style RMSNorm, 1 for Gemma's (1 + w)
    norm_weight_offset: float = 0.0
    # attribute names on the model config
    num_heads_attr: str = "num_attention_heads"
    num_kv_heads_attr: str | None = "num_key_value_heads"
    hidden_attr: str = "hidden_size"
    # the linears each pre-norm's output feeds (SmoothQuant's smoothing, AWQ's norm folds)
    norm_feeds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scale_chains: tuple[ScaleChain, ...] = ()
    io: str = "causal_lm"

    # -- names -------------------------------------------------------------------------------
    def role_path(self, role: str) -> str:
        """Path of a linear role inside a block (``q.first`` -> ``self_attn.q_proj.first``;
        ``gate[3]`` -> ``mlp.experts.experts.3.gate_proj``)."""
        base, _, part = role.partition(".")
        expert = _EXPERT_ROLE.match(base) if self.moe is not None else None
        if (base not in self.linears and expert is None) or (part and part not in FACTOR_PARTS):
            raise KeyError(f"{self.family} adapter has no linear role {role!r}")
        path = f"{self.experts_path}.experts.{expert[2]}.{expert[1]}_proj" if expert else self.linears[base]
        return path + (f".{part}" if part else "")

    @property
    def experts_path(self) -> str | None:
        """Path of the experts module inside a block (None without MoE layers)."""
        return None if self.moe is None else f"{self.moe.block}.{self.moe.experts}"

    def layer_name(self, index: int, role: str) -> str:
        """Full dotted name of block ``index``'s linear ``role`` (e.g. ``model.layers.3.mlp.up_proj``)."""
        return f"{self.blocks}.{index}.{self.role_path(role)}"

    # -- structure ---------------------------------------------------------------------------
    def get_blocks(self, model: nn.Module) -> nn.ModuleList:
        blocks = get_path(model, self.blocks)
        if blocks is None:
            raise AttributeError(f"{self.family} adapter: model has no blocks at {self.blocks!r}")
        return blocks

    def block_linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """role -> linear module of one block, for the roles this block has (factored linears
        as their two factors ``<role>.first`` / ``<role>.second``)."""
        found: dict[str, nn.Module] = {}

        def add(role: str, module: nn.Module | None) -> None:
            if module is None:
                return
            parts = getattr(module, "factor_parts", None)  # a FactoredLinear: its factors are the linears
            if parts:
                found.update({f"{role}.{p}": getattr(module, p) for p in parts})
            else:
                found[role] = module

        for role, path in self.linears.items():
            add(role, get_path(block, path))
        for e, expert in enumerate(self.expert_modules(block)):  # a MoE block's experts, one role per linear
            for part in EXPERT_PARTS:
                add(expert_role(part, e), getattr(expert, f"{part}_proj", None))
        return found

    def expert_modules(self, block: nn.Module) -> list[nn.Module]:
        """The experts of a MoE block (each with ``gate_proj``/``up_proj``/``down_proj``); [] when the
        block has none (or its experts are still fused 3-D parameters)."""
        bank = get_path(block, self.experts_path)
        experts = getattr(bank, "experts", None)
        return list(experts) if isinstance(experts, nn.ModuleList) else []

    def linear_paths(self, model: nn.Module) -> dict[str, nn.Module]:
        """Full dotted name -> module for every compressible linear in the blocks."""
        return {self.layer_name(i, role): module for i, block in enumerate(self.get_blocks(model))
                for role, module in self.block_linears(block).items()}

    def weight_matrix(self, module: nn.Module) -> torch.Tensor:
        """The weight as [out_features, in_features]. For a plain linear it is a view (writes go to
        the module); for a packed (``dequantize``) or factored (``dense_weight``) module it is a
        float copy of the weight it computes with."""
        for reader in ("dequantize", "dense_weight"):
            if callable(getattr(module, reader, None)):
                return getattr(module, reader)()
        w = module.weight
        return w.t() if self.transposed_weights else w

    def input_group(self, role: str) -> tuple[str, ...]:
        """The roles that share ``role``'s input (just ``(role,)`` if it shares with none).
        The first factors of a group share its input; a second factor reads its own first's output."""
        base, _, part = role.partition(".")
        if part == "second":
            return (role,)
        expert = _EXPERT_ROLE.match(base)
        if expert is not None:  # an expert's gate and up read the tokens routed to it
            parts = ("gate", "up") if expert[1] != "down" else ("down",)
            return tuple(expert_role(p, int(expert[2])) + (f".{part}" if part else "") for p in parts)
        for group in self.input_groups:
            if base in group:
                return tuple(f"{r}.{part}" if part else r for r in group)
        return (role,)

    def observation_groups(self, roles: list[str] | tuple[str, ...], sequential: bool) -> list[tuple[str, ...]]:
        """``roles`` in observe-then-compress order: all at once, or (``sequential``, the
        references' true-sequential order) one group per shared input: q/k/v, o, gate/up, down."""
        if not sequential:
            return [tuple(roles)]
        out: list[tuple[str, ...]] = []
        for role in roles:
            group = tuple(r for r in self.input_group(role) if r in roles)
            if group not in out:
                out.append(group)
        return out

    def uses_mha(self, config: Any) -> bool:
        heads, kv, _ = self.attention_geometry(config)
        return heads == kv

    def chains(self, config: Any) -> list[ScaleChain]:
        """AWQ's scale chains that apply to this model (the v -> o fold only without GQA)."""
        return [c for c in self.scale_chains if not c.needs_mha or self.uses_mha(config)]

    def norm(self, block: nn.Module, role: str) -> nn.Module | None:
        return get_path(block, self.norms.get(role))

    def scale_norm_output(self, norm: nn.Module, scale: torch.Tensor) -> None:
        """In place: make ``norm``'s output ``scale`` times its current output (per channel)."""
        off = self.norm_weight_offset
        norm.weight.copy_(((norm.weight.float() + off) * scale - off).to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.mul_(scale.to(norm.bias.dtype))

    # -- geometry ------------------------------------------------------------------------------
    def attention_geometry(self, config: Any) -> tuple[int, int, int]:
        """(num query heads, num KV heads, head_dim)."""
        heads = getattr(config, self.num_heads_attr)
        kv = getattr(config, self.num_kv_heads_attr, None) if self.num_kv_heads_attr else None
        kv = kv or heads
        head_dim = getattr(config, "head_dim", None) or getattr(config, self.hidden_attr) // heads
        return heads, kv, head_dim

    def tied_embeddings(self, model: nn.Module) -> bool:
        emb, head = get_path(model, self.embed), get_path(model, self.lm_head)
        return emb is not None and head is not None and emb.weight is head.weight

    def missing_roles(self, model: nn.Module, roles: tuple[str, ...]) -> list[str]:
        """Roles that block 0 lacks; empty when every role is present."""
        block = self.get_blocks(model)[0]
        have = self.block_linears(block)
        return [r for r in roles if r not in have]


ADAPTERS: Registry[Adapter] = Registry("model family", entry_point_group="slimbench.adapters")

_LLAMA = Adapter(
    family="llama",
    blocks="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    attn="self_attn",
    mlp="mlp",
    linears={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
    norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    input_groups=(("q", "k", "v"), ("o",), ("gate", "up"), ("down",)),
    rotary="model.rotary_emb",
    norm_feeds={"attn_in": ("q", "k", "v"), "mlp_in": ("gate", "up")},
    scale_chains=(
        ScaleChain("attn_in", ("q", "k", "v"), "attn"),
        ScaleChain("v", ("o",), "o", needs_mha=True),
        ScaleChain("mlp_in", ("gate", "up"), "mlp"),
        ScaleChain("up", ("down",), "down"),
    ),
)
for _name in ("llama", "mistral", "qwen2", "qwen3"):
    ADAPTERS.register(_name, _LLAMA)

# Gemma-3: Llama names, plus sandwich norms around attention and MLP.
ADAPTERS.register(
    "gemma3_text",
    dataclasses.replace(
        _LLAMA,
        family="gemma3",
        norms={
            "attn_in": "input_layernorm",
            "attn_out": "post_attention_layernorm",
            "mlp_in": "pre_feedforward_layernorm",
            "mlp_out": "post_feedforward_layernorm",
        },
        norm_weight_offset=1.0,  # Gemma's RMSNorm multiplies by (1 + weight)
    ),
)

ADAPTERS.register(
    "opt",
    Adapter(
        family="opt",
        blocks="model.decoder.layers",
        embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        lm_head="lm_head",
        attn="self_attn",
        mlp=None,
        linears={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.out_proj",
            "up": "fc1",
            "down": "fc2",
        },
        norms={"attn_in": "self_attn_layer_norm", "mlp_in": "final_layer_norm"},
        input_groups=(("q", "k", "v"), ("o",), ("up",), ("down",)),
        num_kv_heads_attr=None,
        norm_feeds={"attn_in": ("q", "k", "v"), "mlp_in": ("up",)},
    ),
)

ADAPTERS.register(
    "gpt2",
    Adapter(
        family="gpt2",
        blocks="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attn="attn",
        mlp="mlp",
        linears={"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
        norms={"attn_in": "ln_1", "mlp_in": "ln_2"},
        input_groups=(("qkv",), ("o",), ("up",), ("down",)),
        norm_feeds={"attn_in": ("qkv",), "mlp_in": ("up",)},
        transposed_weights=True,
        num_heads_attr="n_head",
        num_kv_heads_attr=None,
        hidden_attr="n_embd",
    ),
)

ADAPTERS.register(
    "gpt_neox",
    Adapter(
        family="gpt_neox",
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="embed_out",
        attn="attention",
        mlp="mlp",
        linears={
            "qkv": "attention.query_key_value",
            "o": "attention.dense",
            "up": "mlp.dense_h_to_4h",
            "down": "mlp.dense_4h_to_h",
        },
        norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
        input_groups=(("qkv",), ("o",), ("up",), ("down",)),
        norm_feeds={"attn_in": ("qkv",), "mlp_in": ("up",)},
        rotary="gpt_neox.rotary_emb",
        num_kv_heads_attr=None,
    ),
)

# Sparse-MoE decoders: Llama-style attention, the MLP replaced by a router + fused experts.
_MIXTRAL = dataclasses.replace(
    _LLAMA,
    family="mixtral",
    linears={k: v for k, v in _LLAMA.linears.items() if k in ("q", "k", "v", "o")},
    input_groups=(("q", "k", "v"), ("o",)),
    norm_feeds={"attn_in": ("q", "k", "v")},
    scale_chains=(ScaleChain("attn_in", ("q", "k", "v"), "attn"), ScaleChain("v", ("o",), "o", needs_mha=True)),
    moe=MoESpec(block="mlp", router="gate", experts="experts"),
)
ADAPTERS.register("mixtral", _MIXTRAL)
ADAPTERS.register(
    "olmoe",
    dataclasses.replace(_MIXTRAL, family="olmoe", moe=dataclasses.replace(_MIXTRAL.moe, num_experts_attr="num_experts")),
)
ADAPTERS.register(
    "qwen2_moe",
    dataclasses.replace(
        _MIXTRAL,
        family="qwen2_moe",
        linears={**_MIXTRAL.linears, "shared_gate": "mlp.shared_expert.gate_proj", "shared_up": "mlp.shared_expert.up_proj",
                 "shared_down": "mlp.shared_expert.down_proj"},
        input_groups=_MIXTRAL.input_groups + (("shared_gate", "shared_up"), ("shared_down",)),
        moe=dataclasses.replace(_MIXTRAL.moe, num_experts_attr="num_experts", shared_expert="shared_expert"),
    ),
)
ADAPTERS.register("qwen3_moe", dataclasses.replace(_MIXTRAL, family="qwen3_moe", moe=dataclasses.replace(_MIXTRAL.moe, num_experts_attr="num_experts")))

# MoEfied dense decoders (slimbench.moe.moefication, loader 'moefied'): the dense family's attention,
# every MLP split into experts (roles gate[e]/up[e]/down[e]) with no router of its own.
MOEFIED_SUFFIX = "_moefied"


def moefied_adapter(base: Adapter) -> Adapter:
    attention = ("q", "k", "v", "o")
    return dataclasses.replace(
        base,
        family=f"{base.family}{MOEFIED_SUFFIX}",
        linears={k: v for k, v in base.linears.items() if k in attention},
        input_groups=tuple(g for g in base.input_groups if set(g) <= set(attention)),
        norm_feeds={k: v for k, v in base.norm_feeds.items() if set(v) <= set(attention)},
        scale_chains=tuple(c for c in base.scale_chains if set(c.roles) <= set(attention)),
        moe=MoESpec(block=base.mlp, router="", experts="experts", trained=False),
    )


for _name in ("llama", "mistral", "qwen2", "qwen3"):
    ADAPTERS.register(_name + MOEFIED_SUFFIX, moefied_adapter(_LLAMA))

# The MNIST DiT of slimbench.models.dit (adaLN-style conditioning, per-head dim 64).
ADAPTERS.register(
    "slimbench_dit",
    Adapter(
        family="dit",
        blocks="dits",
        embed="patch_emb",
        final_norm="ln",
        lm_head=None,
        attn="attn",
        mlp="ff",
        linears={"q": "attn.wq", "k": "attn.wk", "v": "attn.wv", "o": "attn.lv", "up": "ff.0", "down": "ff.2"},
        norms={"attn_in": "ln1", "mlp_in": "ln2"},
        input_groups=(("q", "k", "v"), ("o",), ("up",), ("down",)),
        num_heads_attr="num_heads",
        num_kv_heads_attr=None,
        hidden_attr="emb_size",
        io="slimbench_dit",
    ),
)


def adapter_for(model_type: str) -> Adapter:
    return ADAPTERS.get(model_type)
