"""Physical removal of attention KV groups and MLP intermediate channels (``sliced-dense``).

Shared by the structured pruning methods (Numerical Pruning, FLAP). Everything goes through
the adapter's linear roles; layers are replaced by new, smaller ``nn.Linear`` modules.

* **Attention, GQA-aware.** The removable unit is a KV group: one KV head and the
  ``g = heads / kv_heads`` query heads that share it (for MHA, ``g = 1``: one head). Removing
  group ``j`` deletes q output rows of its ``g`` query heads, k and v output rows of KV head
  ``j``, and the matching ``g·head_dim`` input columns of o. Query heads are laid out so that
  query head ``h`` reads KV head ``h // g`` (transformers' ``repeat_kv``), so group ``j`` is
  query heads ``j·g … j·g+g-1``. Because whole groups go, ``num_key_value_groups`` (the
  attention module's only per-head attribute used in ``forward``; q/k/v are reshaped with -1
  heads in transformers 5.x) stays valid, and the KV cache of a layer shrinks with its
  kept KV heads (the dynamic cache takes its shapes from the key/value states).
* **MLP.** Removing channel ``i`` deletes output row ``i`` of gate and up (whichever exist)
  and input column ``i`` of down.
* Biases are sliced along the output rows where present; the caller may pass a new
  weight/bias for o/down (compensation). The model config keeps its dense head counts
  (heads differ per layer after pruning): a pruned model is not reloadable from its config.
* Tied embeddings and lm_head are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimbench.errors import ConfigError
from slimbench.models.adapters import Adapter, get_path, set_path
from slimbench.records import LayerReport

ATTN_ROLES = ("q", "k", "v", "o")
MLP_OUT_ROLES = ("gate", "up")  # column-pruned (output rows removed); "down" is row-pruned


@dataclass(frozen=True)
class BlockGeometry:
    """Current attention geometry of one block (kv_heads may differ per block after pruning)."""

    kv_heads: int
    group_size: int  # query heads per KV head
    head_dim: int
    intermediate: int

    @property
    def group_channels(self) -> int:
        return self.group_size * self.head_dim  # o input channels per KV group


def check_structured(adapter: Adapter) -> None:
    """Raise ConfigError when the family lacks separate q/k/v/o and up/down linears (MoE blocks:
    their experts' channels are not pruned structurally)."""
    if adapter.moe is not None:
        raise ConfigError(f"structured pruning of mixture-of-experts MLPs is not supported ({adapter.family} has MoE layers)")
    missing = [r for r in (*ATTN_ROLES, "up", "down") if r not in adapter.linears]
    if missing or adapter.transposed_weights:
        why = f"no linear roles {missing}" if missing else "transposed (Conv1D) weights"
        raise ConfigError(f"structured pruning needs separate q/k/v/o and up/down nn.Linear layers; {adapter.family} has {why}")


def block_geometry(adapter: Adapter, config, block: nn.Module) -> BlockGeometry:
    heads, kv_heads, head_dim = adapter.attention_geometry(config)
    lin = adapter.block_linears(block)
    kv_now = lin["k"].out_features // head_dim
    return BlockGeometry(kv_heads=kv_now, group_size=heads // kv_heads, head_dim=head_dim, intermediate=lin["down"].in_features)


def prunable_params(adapter: Adapter, model: nn.Module) -> int:
    """Parameters (weights + biases) of every block's attention and MLP linears."""
    return sum(p.numel() for m in adapter.linear_paths(model).values() for p in m.parameters())


def unit_params(adapter: Adapter, block: nn.Module, geo: BlockGeometry) -> tuple[int, int]:
    """(parameters of one KV group, parameters of one MLP channel) in this block, measured."""
    lin = adapter.block_linears(block)
    attn = sum(p.numel() for r in ATTN_ROLES for p in lin[r].parameters()) - _bias_numel(lin["o"])
    mlp = sum(p.numel() for r in ("gate", "up", "down") if r in lin for p in lin[r].parameters()) - _bias_numel(lin["down"])
    return attn // geo.kv_heads, mlp // geo.intermediate


def _bias_numel(linear: nn.Linear) -> int:
    return 0 if linear.bias is None else linear.bias.numel()


def group_to_channels(keep_groups: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the rows/columns that belong to the kept units (each ``width`` wide)."""
    idx = torch.as_tensor(keep_groups, dtype=torch.long).sort().values
    return (idx[:, None] * width + torch.arange(width, device=idx.device)).reshape(-1)


def ensure_nonempty(keep: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Keep-mask with at least one unit (the best-scored) kept; True when the guard fired."""
    if bool(keep.any()):
        return keep, False
    keep = keep.clone()
    keep[int(torch.argmax(scores))] = True
    return keep, True


# -- slicing ---------------------------------------------------------------------------------
def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> nn.Linear:
    """A new, smaller nn.Linear: ``rows`` of the outputs, ``cols`` of the inputs kept.

    ``weight`` ([out_kept, in_kept]) / ``bias`` ([out_kept]) replace the sliced values (used
    by compensation); a bias given for a layer without one adds a bias parameter.
    """
    w = linear.weight.detach()  # [out, in]
    if weight is None:
        weight = w if rows is None else w[rows]
        weight = weight if cols is None else weight[:, cols]
    if bias is None and linear.bias is not None:
        bias = linear.bias.detach() if rows is None else linear.bias.detach()[rows]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(linear.weight.requires_grad)
    return new


def _replace(adapter: Adapter, block: nn.Module, role: str, new: nn.Linear) -> None:
    set_path(block, adapter.role_path(role), new)


def remove_attention_groups(adapter: Adapter, block: nn.Module, geo: BlockGeometry, keep_groups: torch.Tensor,
                            o_weight: torch.Tensor | None = None, o_bias: torch.Tensor | None = None) -> None:
    """Keep only the KV groups ``keep_groups`` (indices); o_weight is [D, kept channels]."""
    lin = adapter.block_linears(block)
    q_rows = group_to_channels(keep_groups, geo.group_channels)  # query heads of kept groups
    kv_rows = group_to_channels(keep_groups, geo.head_dim)
    _replace(adapter, block, "q", sliced_linear(lin["q"], rows=q_rows))
    _replace(adapter, block, "k", sliced_linear(lin["k"], rows=kv_rows))
    _replace(adapter, block, "v", sliced_linear(lin["v"], rows=kv_rows))
    _replace(adapter, block, "o", sliced_linear(lin["o"], cols=q_rows, weight=o_weight, bias=o_bias))


def remove_mlp_channels(adapter: Adapter, block: nn.Module, keep: torch.Tensor,
                        down_weight: torch.Tensor | None = None, down_bias: torch.Tensor | None = None) -> None:
    """Keep only intermediate channels ``keep`` (indices); down_weight is [D, kept]."""
    lin = adapter.block_linears(block)
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for role in MLP_OUT_ROLES:
        if role in lin:
            _replace(adapter, block, role, sliced_linear(lin[role], rows=keep))
    _replace(adapter, block, "down", sliced_linear(lin["down"], cols=keep, weight=down_weight, bias=down_bias))
    mlp = get_path(block, adapter.mlp)
    if mlp is not None and hasattr(mlp, "intermediate_size"):  # informational attribute, kept truthful
        mlp.intermediate_size = int(keep.numel())


def group_mean(channel_scores: torch.Tensor, geo: BlockGeometry) -> torch.Tensor:
    """Mean of per-channel scores over each KV group's o input channels: [kv_heads]."""
    return channel_scores.reshape(geo.kv_heads, geo.group_channels).mean(dim=1)


def select_global_lowest(scores: torch.Tensor, weights: torch.Tensor, ratio: float, by_weight: bool) -> torch.Tensor:
    """Mask of the units to prune: the lowest scores, ``int(ratio·n)`` of them (units), or
    the prefix whose summed ``weights`` (parameters) is closest to ``ratio·Σweights``."""
    order = torch.argsort(scores, stable=True)
    if by_weight:
        cum = torch.cat([weights.new_zeros(1), torch.cumsum(weights[order], 0)])
        count = int(torch.argmin((cum - ratio * weights.sum()).abs()))
    else:
        count = int(ratio * scores.numel())
    prune = torch.zeros_like(scores, dtype=torch.bool)
    prune[order[:count]] = True
    return prune


@dataclass
class Removal:
    """What to keep in one block (boolean masks) and the guard events."""

    keep_groups: torch.Tensor  # [kv_heads] bool
    keep_channels: torch.Tensor  # [intermediate] bool
    forced: list[str]


def guarded_removal(keep_groups, keep_channels, group_scores, channel_scores) -> Removal:
    keep_groups, fg = ensure_nonempty(keep_groups, group_scores)
    keep_channels, fc = ensure_nonempty(keep_channels, channel_scores)
    forced = (["kept best KV group (all were selected)"] if fg else []) + (["kept best MLP channel (all were selected)"] if fc else [])
    return Removal(keep_groups, keep_channels, forced)


def summarize(adapter: Adapter, model: nn.Module, removals: list[Removal], params_before: int, group_params: list[int],
              channel_params: list[int]) -> tuple[dict, list[LayerReport]]:
    """Details for the record (unit and parameter ratios, measured) and a report per sliced layer."""
    after = prunable_params(adapter, model)
    groups = sum(r.keep_groups.numel() for r in removals)
    channels = sum(r.keep_channels.numel() for r in removals)
    groups_removed = sum(int((~r.keep_groups).sum()) for r in removals)
    channels_removed = sum(int((~r.keep_channels).sum()) for r in removals)
    details = {
        "prunable_params_before": params_before,
        "prunable_params_after": after,
        "param_reduction": round(1 - after / params_before, 6),  # of attention+MLP linears
        "unit_ratio_removed": round((groups_removed + channels_removed) / (groups + channels), 6),
        "kv_groups_removed": groups_removed,
        "kv_groups_total": groups,
        "channels_removed": channels_removed,
        "channels_total": channels,
        "params_per_kv_group": group_params,
        "params_per_channel": channel_params,
        "guard_fired": [i for i, r in enumerate(removals) if r.forced],
    }
    layers = []
    for i, (block, r) in enumerate(zip(adapter.get_blocks(model), removals)):
        roles = adapter.block_linears(block)
        if not bool(r.keep_groups.all()):
            kept = r.keep_groups.nonzero().flatten().tolist()
            layers += [LayerReport(adapter.layer_name(i, role), role, "sliced", path="sliced-dense",
                                   extra={"kept_kv_groups": kept, "kv_groups": int(r.keep_groups.numel())}) for role in ATTN_ROLES]
        if not bool(r.keep_channels.all()):
            layers += [LayerReport(adapter.layer_name(i, role), role, "sliced", path="sliced-dense",
                                   extra={"kept_channels": int(r.keep_channels.sum()), "channels": int(r.keep_channels.numel())})
                       for role in (*MLP_OUT_ROLES, "down") if role in roles]
    return details, layers
