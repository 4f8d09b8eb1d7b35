"""Learned and clustered MoE state as safetensors files, keyed by what determines it.

Neuron labels [layers, d_ff] depend on (model identity, MoEfication options); MLP router
weights also on the calibration set and the training options. ``cache_key`` hashes whatever
dict the caller passes (e.g. ``{"model": source.to_dict(), "moefication": asdict(cfg),
"calibration": calib.fingerprint(), "router": asdict(train_cfg)}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from slimbench.records import stable_hash


def cache_key(parts: dict[str, Any]) -> str:
    return stable_hash(parts)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomic write: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta or {})})
    tmp.replace(path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def cached_tensors(path: Path | None, compute: Callable[[], dict[str, torch.Tensor]], meta: dict | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, read_from_cache): ``compute()`` once per path; None disables the cache."""
    if path is not None and path.is_file():
        return load_tensors(path), True
    tensors = compute()
    if path is not None:
        save_tensors(path, tensors, meta)
    return tensors, False


def router_tensors(routers: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """One flat dict of every layer's router state: ``"<layer>.<name>"``."""
    return {f"{i}.{k}": v for i, r in enumerate(routers) for k, v in r.state_dict().items()}


def layer_state(tensors: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    prefix = f"{layer}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
