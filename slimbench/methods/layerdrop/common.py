"""Shared machinery of the layer-dropping methods: similarity observers, selection, surgery.

Similarity of a residual module (He et al. 2024, "What Matters in Transformers?", §4.1 of
METHODS-papers.md; CASE-Lab-UMD/LLM-Drop @ 28b5dd1, ``layer_drop.py`` with
``layer_drop_norm=True`` and ``block_drop.py``):

* attention: X = residual stream entering the attention sublayer (the input of its pre-norm),
  Y = X + update, where update is the attention output, or the output of the post-attention
  norm when the family has one (Gemma-3's sandwich norm: the residual adds the normed output);
* MLP: X = residual stream after attention (the input of the MLP pre-norm), Y = X + update
  (the MLP output, or the post-feed-forward norm's output on Gemma-3);
* block: X = block input, Y = block output.

similarity = mean over all calibration tokens of cos(X_t, Y_t) in fp32; importance = 1 − it.
Scores come from one layer-by-layer pass over the original model
(``CalibrationEngine.collect``: each block sees the dense previous blocks' outputs).

Removal (the execution path ``dropped-modules``):

* a dropped attention sublayer is replaced by a parameter-free module that computes nothing
  and returns a scalar zero (the decoder layer's residual add is then ``h + 0``); its pre-norm
  and, where present, its post-norm become ``nn.Identity``. Its KV-cache slot: transformers 5.x
  builds ``DynamicCache(config)`` with one slot per layer from the config; the slot of a
  dropped layer is made a ``DummyLayer`` (the type transformers itself uses for attention-free
  and KV-sharing layers; it holds no tensors) through ``config.kv_sharing_modes`` — the one
  generic config field that selects it without changing ``config.layer_types``, which
  Gemma-3 also uses for its masks and rotary embeddings. Kept layers keep their indices;
  sequence length and mask sizes are read from the first non-dummy slot. (The reference
  instead compacts a ``kv_cache_idx``; the memory effect is the same: KV bytes scale with
  the number of kept attention layers.)
* a dropped MLP is replaced likewise (its pre-/post-norms too); no KV effect;
* a dropped block is deleted from the block list; every ``layer_idx`` attribute inside the
  kept blocks, ``config.num_hidden_layers`` and the per-layer config lists
  (``layer_types``, ``kv_sharing_modes``) are renumbered so the cache stays consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.calibration import CalibrationEngine
from slimbench.errors import ConfigError
from slimbench.hooks import FunctionHook, HookRegistry
from slimbench.kernels.skipped import SkippedAttention, SkippedMLP
from slimbench.methods.base import LayerReport, MethodResult
from slimbench.models.adapters import Adapter, get_path, set_path
from slimbench.params import check_params, param

SUBLAYERS = ("attn", "mlp")
# removing modules works whatever they hold (plain, pruned, factored or packed); runtime hooks come last
DROP_ACCEPTS = frozenset({"dense", "masked", "sliced", "dropped", "factored", "quantized"})
PER_LAYER_CONFIG_LISTS = ("layer_types", "kv_sharing_modes")


@dataclass(frozen=True)
class DropConfig:
    drop_n: int = param(4, "number of modules (sublayers or blocks) removed", ge=1)
    iterative: bool = param(False, "drop one module per round and re-score the dropped model", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)
        if not isinstance(self.drop_n, int):
            raise ConfigError(f"drop_n must be an integer >= 1, got {self.drop_n!r}")


# -- observers --------------------------------------------------------------------------------
class CosineSum:
    """Running sum of per-token cosines (fp32 cosines, float64 sum)."""

    def __init__(self) -> None:
        self.total, self.tokens = 0.0, 0

    def add(self, x: torch.Tensor, y: torch.Tensor, angular: bool = False) -> None:
        cos = F.cosine_similarity(x.float(), y.float(), dim=-1)  # [B, T]
        if angular:  # ShortGPT's angular distance, returned as 1 − arccos(cos)/π
            cos = 1 - torch.arccos(cos.clamp(-1, 1)) / torch.pi
        self.total += cos.double().sum().item()
        self.tokens += cos.numel()

    def mean(self) -> float:
        return self.total / self.tokens


class SublayerCosine:
    """Mean over tokens of cos(X, X + update) for one residual sublayer (``attn`` or ``mlp``)."""

    def __init__(self, sublayer: str) -> None:
        self.sublayer, self.acc, self._x = sublayer, CosineSum(), None

    def attach(self, block: nn.Module, adapter: Adapter, hooks: HookRegistry) -> None:
        pre_norm, module, post_norm = sublayer_parts(block, adapter, self.sublayer)
        writer = post_norm if post_norm is not None else module  # what the residual adds

        def keep_input(_module, args, kwargs):
            self._x = args[0] if args else kwargs["hidden_states"]

        def on_update(_module, _args, _kwargs, output):
            update = output[0] if isinstance(output, tuple) else output  # [B, T, D]
            self.acc.add(self._x, self._x.float() + update.float())

        hooks.add(f"layerdrop/{id(self)}/input", pre_norm, FunctionHook(pre=keep_input))
        hooks.add(f"layerdrop/{id(self)}/update", writer, FunctionHook(post=on_update))

    def result(self) -> float:
        return self.acc.mean()


class BlockIOCosines:
    """Every block-level similarity the block drops use, from one observation of (block input,
    block output): the plain mean cosine (Block Drop), ShortGPT's angular form, and both with
    the final norm applied to the output (``final_norm``, given for the last block: ShortGPT's
    last hidden state is post-norm). Block Drop and ShortGPT with any options read their
    variant from one cached pass (``block_similarities``)."""

    def __init__(self, final_norm: nn.Module | None = None) -> None:
        self.final_norm = final_norm
        suffixes = ("", "+final_norm") if final_norm is not None else ("",)
        self.sums = {kind + suffix: CosineSum() for suffix in suffixes for kind in ("cos", "angular")}

    def attach(self, block: nn.Module, adapter: Adapter, hooks: HookRegistry) -> None:
        pass

    def on_block_io(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        outputs = {"": out}
        if self.final_norm is not None:
            outputs["+final_norm"] = self.final_norm(out)
        for suffix, y in outputs.items():
            self.sums["cos" + suffix].add(inp, y)
            self.sums["angular" + suffix].add(inp, y, angular=True)

    def result(self) -> dict[str, float]:
        return {name: acc.mean() for name, acc in self.sums.items()}


def sublayer_parts(block: nn.Module, adapter: Adapter, sublayer: str) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(pre-norm, module, post-norm or None) of a block's ``attn`` or ``mlp`` sublayer."""
    module = get_path(block, getattr(adapter, sublayer))
    pre_norm = adapter.norm(block, f"{sublayer}_in")
    if module is None or pre_norm is None:
        raise KeyError(f"{adapter.family} block has no {sublayer} sublayer with a pre-norm")
    return pre_norm, module, adapter.norm(block, f"{sublayer}_out")


def check_sublayer(adapter: Adapter, sublayer: str) -> None:
    if getattr(adapter, sublayer) is None or f"{sublayer}_in" not in adapter.norms:
        raise ConfigError(f"{adapter.family} models: no {sublayer} sublayer with a pre-norm is known to the adapter")


# -- scoring ----------------------------------------------------------------------------------
Key = tuple[str, int]  # (kind: attn | mlp | block, original block index)


def sublayer_similarities(bundle, calib, kinds: tuple[str, ...], dropped: set[Key]) -> dict[Key, float]:
    """similarity of every live ``kinds`` sublayer of the current model (blocks stay in place).

    Both sublayer kinds are always observed, so Attention/MLP/Joint Drop share one cached pass.
    """
    engine = CalibrationEngine(bundle, calib)

    def observers(i, block):
        return {k: SublayerCosine(k) for k in SUBLAYERS if (k, i) not in dropped}

    stats = engine.collect(observers, cache_key=f"layerdrop-sublayer-cosine-v1:{sorted(dropped)}", desc="sublayer cosine")
    return {(k, i): float(s[k]) for i, s in enumerate(stats) for k in kinds if k in s}


def block_similarities(bundle, calib, alive: list[int], variant: Callable[[int, int], str] = lambda i, n: "cos") -> dict[Key, float]:
    """similarity per current block, keyed by the block's original index: ``variant(i, n_blocks)``
    names which ``BlockIOCosines`` value block ``i`` is scored by. One cached pass per model and
    block list serves Block Drop and ShortGPT with any options."""
    engine = CalibrationEngine(bundle, calib)
    adapter = bundle.adapter
    final_norm = get_path(bundle.model, adapter.final_norm) if adapter.final_norm else None
    n = len(alive)
    stats = engine.collect(lambda i, b: {"block": BlockIOCosines(final_norm if i == n - 1 else None)},
                           cache_key=f"layerdrop-block-io-cosines-v1:{alive}", desc="block cosine")
    return {("block", alive[i]): float(s["block"][variant(i, n)]) for i, s in enumerate(stats)}


def drop_by_similarity(bundle, calib, score: Callable[[list[int], list[Key]], dict[Key, float]], n: int, iterative: bool) -> tuple[list[Key], list[dict]]:
    """Drop the ``n`` most similar modules: all at once from the original model's scores
    (one-shot), or one per round, re-scoring the already-dropped model (iterative).

    ``score(alive, dropped)`` returns {(kind, original index): similarity} for the live
    modules; ``alive`` lists the original indices of the current blocks.
    """
    model, adapter = bundle.model, bundle.adapter
    alive = list(range(len(adapter.get_blocks(model))))
    dropped: list[Key] = []
    rounds = []
    while len(dropped) < n:
        similarity = score(alive, dropped)
        chosen = most_similar(similarity, 1 if iterative else n)
        rounds.append({"similarity": similarity_table(similarity, len(alive) + _blocks_gone(dropped)), "dropped": [list(k) for k in chosen]})
        for kind in SUBLAYERS:
            for _, i in (k for k in chosen if k[0] == kind):
                drop_sublayer(model, adapter, kind, i)
        gone = [alive.index(i) for kind, i in chosen if kind == "block"]
        if gone:
            remove_blocks(model, adapter, gone)
            alive = [i for j, i in enumerate(alive) if j not in gone]
        dropped += chosen
    return dropped, rounds


def _blocks_gone(dropped: list[Key]) -> int:
    return sum(kind == "block" for kind, _ in dropped)


def similarity_table(similarity: dict[Key, float], n_blocks: int) -> dict[str, list]:
    """{kind: [similarity of original block i or None]} (None: not scored or already dropped)."""
    table: dict[str, list] = {}
    for (kind, i), value in similarity.items():
        table.setdefault(kind, [None] * n_blocks)[i] = round(value, 8)
    return table


def most_similar(similarity: dict[Key, float], n: int) -> list[Key]:
    """The ``n`` keys of highest similarity (ties: lower index first, attention before MLP)."""
    return sorted(similarity, key=lambda k: (-similarity[k], k[1], k[0]))[:n]


# -- surgery ----------------------------------------------------------------------------------
_SKIPPED = {"attn": SkippedAttention, "mlp": SkippedMLP}


def decoder_config(model: nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def drop_sublayer(model: nn.Module, adapter: Adapter, sublayer: str, index: int) -> None:
    block = adapter.get_blocks(model)[index]
    set_path(block, getattr(adapter, sublayer), _SKIPPED[sublayer]())
    for role in (f"{sublayer}_in", f"{sublayer}_out"):
        if adapter.norm(block, role) is not None:
            set_path(block, adapter.norms[role], nn.Identity())
    if sublayer == "attn":
        config = decoder_config(model)
        modes = list(getattr(config, "kv_sharing_modes", None) or [None] * len(adapter.get_blocks(model)))
        modes[index] = "reuse"  # DynamicCache(config) then holds a DummyLayer (no tensors) here
        config.kv_sharing_modes = modes


def remove_blocks(model: nn.Module, adapter: Adapter, indices: list[int]) -> None:
    blocks = adapter.get_blocks(model)
    n_before = len(blocks)
    keep = [i for i in range(n_before) if i not in set(indices)]
    set_path(model, adapter.blocks, nn.ModuleList([blocks[i] for i in keep]))
    for new_index, i in enumerate(keep):
        for module in blocks[i].modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = decoder_config(model)
    for attr in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, attr, None)
        if isinstance(values, (list, tuple)) and len(values) == n_before:
            setattr(config, attr, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)


def kept_attention_layers(model: nn.Module, adapter: Adapter) -> int:
    return sum(not isinstance(get_path(b, adapter.attn), SkippedAttention) for b in adapter.get_blocks(model))


def check_count(n: int, available: int, what: str) -> None:
    if n >= available:
        raise ConfigError(f"drop_n={n} must be smaller than the number of {what} ({available})")


def check_drop_count(n: int, shape, kinds: tuple[str, ...]) -> None:
    """Before weights load: apply()'s bound, from the block count the model's config states."""
    if shape.blocks is not None:
        what = "blocks" if kinds == ("block",) else "+".join(kinds) + " sublayers"
        check_count(n, shape.blocks * len(kinds), what)


# -- the shared apply() of the similarity-based drops ----------------------------------------------
CALIBRATION_NOTE = "paper calibration: C4, 256 x 2048 tokens; this run: its configured calibration set (see calibration)"


def sublayer_drop(bundle, calib, cfg: DropConfig, kinds: tuple[str, ...]) -> MethodResult:
    """Attention / MLP / Joint Layer Drop: score ``kinds`` sublayers, drop the most similar."""
    model, adapter = bundle.model, bundle.adapter
    n_blocks = len(adapter.get_blocks(model))
    check_count(cfg.drop_n, n_blocks * len(kinds), "+".join(kinds) + " sublayers")

    def score(alive, gone):
        return sublayer_similarities(bundle, calib, kinds, set(gone))

    dropped, rounds = drop_by_similarity(bundle, calib, score, cfg.drop_n, cfg.iterative)
    details = {f"dropped_{k}": sorted(i for kind, i in dropped if kind == k) for k in kinds}
    details.update(_common_details(model, adapter, dropped, rounds, cfg, n_blocks))
    layers = [LayerReport(f"{adapter.blocks}.{i}.{getattr(adapter, kind)}", kind, "dropped") for kind, i in dropped]
    return MethodResult("dropped-modules", details=details, notes=[CALIBRATION_NOTE], layers=layers)


def block_drop(bundle, calib, cfg: DropConfig, variant: Callable[[int, int], str] = lambda i, n: "cos", note: str = CALIBRATION_NOTE) -> MethodResult:
    """Block Drop (and ShortGPT through ``variant``, see ``block_similarities``): drop the most similar whole blocks."""
    model, adapter = bundle.model, bundle.adapter
    n_blocks = len(adapter.get_blocks(model))
    check_count(cfg.drop_n, n_blocks, "blocks")

    def score(alive, gone):
        return block_similarities(bundle, calib, alive, variant)

    dropped, rounds = drop_by_similarity(bundle, calib, score, cfg.drop_n, cfg.iterative)
    details = {"dropped_blocks": sorted(i for _, i in dropped)}
    details.update(_common_details(model, adapter, dropped, rounds, cfg, n_blocks))
    layers = [LayerReport(f"{adapter.blocks}.{i}", "block", "dropped", extra={"original_index": i}) for _, i in dropped]
    return MethodResult("dropped-modules", details=details, notes=[note], layers=layers)


def _common_details(model, adapter, dropped, rounds, cfg, n_blocks) -> dict:
    return {
        "drop_order": [list(k) for k in dropped],  # (kind, original block index), in order of removal
        "similarity": rounds[0]["similarity"],  # original model, per original block index
        "importance": "1 - similarity (mean per-token cosine, fp32); the most similar modules are dropped",
        "selection": "iterative" if cfg.iterative else "one-shot",
        "rounds": rounds if cfg.iterative else [],
        "blocks": {"before": n_blocks, "after": len(adapter.get_blocks(model))},
        "kv_cache_layers": {"before": n_blocks, "after": kept_attention_layers(model, adapter)},
    }
