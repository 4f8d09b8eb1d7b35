"""Saving and reloading a compressed model: safetensors + a JSON description of packed modules.

``save_compressed(model, directory)`` writes

* ``model.safetensors``: every tensor of the state dict, each storage once (tied weights are
  written once and listed under ``aliases``), with each ``QuantLinear`` in its portable form
  (``QuantLinear.export``: torch's machine-specific int4 CPU layout is written as canonical
  packed codes);
* ``compressed.json``: ``{"format", "version", "modules": {name: type, layout, bits, group
  size or rank, shapes and dtypes of its tensors}, "aliases", "meta"}``.

Compressed module types (``MODULE_TYPES``: ``QuantLinear``, the low-rank ``FactoredLinear``)
describe themselves with ``export()`` and are rebuilt with ``from_export()``.
``load_compressed(model, directory)`` takes a freshly loaded dense model of the same
architecture, replaces the listed linears by the saved module types rebuilt from the file
(re-packed for this machine's kernels), and loads every other tensor strictly (so folded
norm scales of SmoothQuant/AWQ come back too). Outputs are identical to the saved model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from slimbench.kernels.factored import FactoredLinear
from slimbench.kernels.qlinear import QuantLinear
from slimbench.models.adapters import set_path

FORMAT, VERSION = "slimbench-compressed", 1
MODULE_TYPES: dict[str, type] = {"quant": QuantLinear, "factored": FactoredLinear}
_TYPE_NAMES = {cls: name for name, cls in MODULE_TYPES.items()}


def save_compressed(model: nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    packed = {name: m for name, m in model.named_modules() if type(m) in _TYPE_NAMES}
    tensors, modules = {}, {}
    for name, module in packed.items():
        info, parts = module.export()
        modules[name] = {**info, "type": _TYPE_NAMES[type(module)]}
        tensors.update({f"{name}.{k}": v for k, v in parts.items()})
    inside = {f"{name}." for name in packed}
    aliases, seen = {}, {}
    for key, value in model.state_dict().items():
        if value is None or any(key.startswith(p) for p in inside):
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    doc = {"format": FORMAT, "version": VERSION, "modules": modules, "aliases": aliases, "meta": meta or {}}
    (directory / "compressed.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    return directory


def load_compressed(model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild the saved compressed model inside ``model`` (same architecture, dense weights)."""
    directory = Path(directory)
    doc = json.loads((directory / "compressed.json").read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{directory} is not a {FORMAT} v{VERSION} checkpoint")
    tensors = load_file(str(directory / "model.safetensors"))
    for name, info in doc["modules"].items():
        prefix = f"{name}."
        parts = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] in info["tensors"]}
        if set(parts) != set(info["tensors"]):
            raise ValueError(f"{name}: tensors {sorted(info['tensors'])} expected, found {sorted(parts)}")
        set_path(model, name, MODULE_TYPES[info.get("type", "quant")].from_export(info, parts))
        for k in parts:
            del tensors[prefix + k]
    for alias, target in doc["aliases"].items():
        tensors[alias] = tensors[target]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    packed_keys = {k for k in missing if any(k.startswith(f"{n}.") for n in doc["modules"])}
    if set(missing) - packed_keys or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {sorted(set(missing) - packed_keys)[:5]}, unexpected {sorted(unexpected)[:5]}")
    _retie(model, doc["aliases"])
    return model


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """load_state_dict copies values; tied parameters stay tied because they share storage."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, target in aliases.items():
        if alias in params and target in params and params[alias] is not params[target]:
            raise ValueError(f"{alias} is saved as a tie of {target} but the model does not tie them")


def saved_modules(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "compressed.json").read_text())["modules"]


__all__ = ["save_compressed", "load_compressed", "saved_modules"]
