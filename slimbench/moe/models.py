"""MoE models as slimbench loads them: trained MoEs with compressible experts, MoEfied dense models.

* ``unfuse_experts``: a trained sparse MoE (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE in transformers 5)
  stores its experts as fused 3-D parameters; at load every block's experts module is replaced by
  ``UnfusedExperts`` (one gate/up/down ``nn.Linear`` per expert, the same function), so pruning,
  quantization and low-rank methods reach every expert through the adapter's expert roles and
  their calibration statistics come from the tokens routed to each expert.
* ``moefy_cached``: MoEfication (``slimbench.moe.moefication``) of a dense SwiGLU model with the
  neuron labels cached as safetensors, keyed by the dense model's identity and the options.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from slimbench.models.adapters import Adapter, get_path, set_path
from slimbench.moe.cache import cache_key, cached_tensors
from slimbench.moe.dispatch import UnfusedExperts
from slimbench.moe.moefication import MoEficationConfig, MoEfiedMLP, cluster_model, moefy

log = logging.getLogger(__name__)


def unfuse_experts(model: nn.Module, adapter: Adapter) -> int:
    """In place: every block's fused experts -> ``UnfusedExperts``; returns how many were replaced."""
    replaced = 0
    path = adapter.experts_path
    for block in adapter.get_blocks(model):
        experts = get_path(block, path)
        if experts is None or isinstance(experts, UnfusedExperts):
            continue
        set_path(block, path, UnfusedExperts.from_fused(experts).to(next(experts.parameters()).dtype))
        replaced += 1
    return replaced


def _writable(path: Path) -> Path | None:
    """``path`` if its directory can be created, else None (the cache is then skipped)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    except OSError as exc:
        log.warning("MoEfication labels are not cached: %s", exc)
        return None


def moefy_cached(model: nn.Module, adapter: Adapter, config: MoEficationConfig, identity: dict, cache_dir: Path | None,
                 n_jobs: int = 1) -> tuple[list[MoEfiedMLP], dict]:
    """In place: MoEfy every block's MLP; labels cached under ``cache_dir/moe`` by (``identity``, config).

    ``n_jobs`` > 1 clusters layers in parallel processes (worth it for real models only: starting
    the workers costs about a second). Returns the MoEfied MLPs and what happened (cache file,
    whether it was read)."""
    key = cache_key({"model": identity, "moefication": dataclasses.asdict(config)})
    path = None if cache_dir is None else _writable(Path(cache_dir) / "moe" / f"labels-{key}.safetensors")
    tensors, hit = cached_tensors(path, lambda: {"labels": cluster_model(model, adapter, config, n_jobs=n_jobs)},
                                  meta={"model": identity, "moefication": dataclasses.asdict(config)})
    layers = moefy(model, adapter, tensors["labels"].to(torch.long))
    return layers, {"labels_cache": None if path is None else str(path), "labels_cached": hit}
