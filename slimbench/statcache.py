"""A disk cache for calibration statistics that never runs code from the disk.

An entry is a directory holding

* ``stats-<sha>.safetensors``: every tensor of the cached object (safetensors: a JSON header and
  raw bytes; reading it cannot execute anything);
* ``stats.json``: the object's structure (dicts, lists, tuples, numbers, strings, and instances
  of the dataclasses registered with ``cacheable``), tensors referenced by name, and the sha256
  and size of the tensor file. It is written last: it commits the entry.

``load`` verifies the sidecar's format and the tensor file's sha256 before decoding, and decodes
only the registered types; anything else (a corrupted or edited file, a pickle from an older
slimbench or planted by someone) raises ``CacheRefused`` with the reason, and the caller
recomputes. Floats keep their exact value (JSON's shortest repr round-trips; NaN and infinities
are tagged), tensors their dtype, shape, bits and device. An object holding a type that is not
registered is not cached (``NotCacheable``), never pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = "slimbench-statcache"
VERSION = 1
SIDECAR = "stats.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")

_TYPES: dict[str, type] = {}


class CacheRefused(Exception):
    """The entry is missing, damaged, edited or of an unknown format; recompute."""


class NotCacheable(TypeError):
    """The object holds a value of a type the cache does not store."""


def cacheable(cls: type) -> type:
    """Class decorator: instances of this dataclass may be cached (by field, not by pickle)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _TYPES[cls.__qualname__] = cls
    return cls


# -- encoding ----------------------------------------------------------------------------------
class _Encoder:
    """Structure -> JSON-ready tree + named tensors. A tensor or object met twice (LinearInputs
    shares one InputStats between q, k and v) is stored once and referenced, so the decoded
    structure shares it too."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.seen: dict[int, Any] = {}  # id(obj) -> its node (kept alive by self.keep)
        self.keep: list[Any] = []

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"$float": repr(obj)}
        if id(obj) in self.seen:
            return self.seen[id(obj)]
        if isinstance(obj, torch.Tensor):
            name = f"t{len(self.tensors)}"
            self.tensors[name] = obj.detach().to("cpu").clone(memory_format=torch.contiguous_format)  # own storage
            return self._remember(obj, {"$tensor": name, "device": str(obj.device)})
        if isinstance(obj, dict):
            return {"$dict": [[self(k), self(v)] for k, v in obj.items()]}
        if isinstance(obj, list):
            return {"$list": [self(v) for v in obj]}
        if isinstance(obj, tuple):
            return {"$tuple": [self(v) for v in obj]}
        if isinstance(obj, frozenset):
            return {"$frozenset": [self(v) for v in sorted(obj, key=repr)]}
        cls = type(obj)
        if _TYPES.get(cls.__qualname__) is cls:
            ref = f"o{len(self.keep)}"
            self._remember(obj, {"$ref": ref})
            fields = {f.name: self(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            return {"$object": cls.__qualname__, "id": ref, "fields": fields}
        raise NotCacheable(f"cannot cache a value of type {cls.__module__}.{cls.__qualname__}")

    def _remember(self, obj: Any, node: dict) -> dict:
        self.seen[id(obj)] = node
        self.keep.append(obj)
        return node


class _Decoder:
    """Tree + tensors -> structure; builds only containers, numbers, strings, tensors and the
    registered dataclasses (an unknown tag or type is refused)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.restored: dict[str, torch.Tensor] = {}
        self.objects: dict[str, Any] = {}

    def __call__(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if not isinstance(node, dict) or not node:
            raise CacheRefused(f"unknown node in the cached structure: {str(node)[:80]}")
        tag = next(iter(node))
        if tag == "$float":
            return float(node["$float"])
        if tag == "$tensor":
            name = node["$tensor"]
            if name not in self.restored:
                self.restored[name] = _restore(self.tensors[name], node.get("device", "cpu"))
            return self.restored[name]
        if tag == "$dict":
            return {_hashable(self(k)): self(v) for k, v in node["$dict"]}
        if tag == "$list":
            return [self(v) for v in node["$list"]]
        if tag == "$tuple":
            return tuple(self(v) for v in node["$tuple"])
        if tag == "$frozenset":
            return frozenset(self(v) for v in node["$frozenset"])
        if tag == "$ref":
            return self.objects[node["$ref"]]
        if tag == "$object" and node["$object"] in _TYPES:
            cls = _TYPES[node["$object"]]
            obj = cls(**{k: self(v) for k, v in node["fields"].items()})
            self.objects[node["id"]] = obj
            return obj
        raise CacheRefused(f"unknown node in the cached structure: {str(node)[:80]}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise CacheRefused("a cached dict key is a list")
    return key


def _restore(tensor: torch.Tensor, device: str) -> torch.Tensor:
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise CacheRefused(f"the cached tensors were on {device}, which this machine does not have")
    return tensor if target.type == "cpu" else tensor.to(target)


# -- files -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def pickles_in(entry: Path) -> list[Path]:
    """Files in ``entry`` that look like pickles (older slimbench wrote ``block<i>.pt``)."""
    return sorted(p for p in entry.iterdir() if p.suffix in PICKLE_SUFFIXES) if entry.is_dir() else []


def save(entry: Path, obj: Any, key: str) -> Path:
    """Write ``obj`` as one entry (atomic: the sidecar is renamed into place last)."""
    from safetensors.torch import save_file

    encoder = _Encoder()
    tree = encoder(obj)  # raises NotCacheable before anything is written
    entry.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(encoder.tensors, tmp, metadata={"format": FORMAT})
        sha = _sha256(Path(tmp))
        tensor_file = entry / f"stats-{sha[:16]}.safetensors"
        os.replace(tmp, tensor_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sidecar = {"format": FORMAT, "version": VERSION, "key": key, "tensor_file": tensor_file.name, "tensors_sha256": sha,
               "tensors_bytes": tensor_file.stat().st_size, "tree": tree}
    fd, tmp = tempfile.mkstemp(dir=entry, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(sidecar, fh, allow_nan=False)
    os.replace(tmp, entry / SIDECAR)
    for stale in entry.glob("stats-*.safetensors"):
        if stale != tensor_file:
            stale.unlink(missing_ok=True)
    return entry / SIDECAR


def read(entry: Path, key: str, what: str) -> Any:
    """The verified entry, or None: absent, or refused (a warning names ``what`` and the reason).
    Pickles left in the entry by older versions are removed unread."""
    for pickle in pickles_in(entry):
        log.warning("%s: refusing %s (a pickle, which could run code; slimbench never loads them); removing it", what, pickle)
        pickle.unlink(missing_ok=True)
    try:
        return load(entry, key)
    except CacheRefused as exc:
        if (entry / SIDECAR).exists():
            log.warning("%s %s refused: %s; recomputing", what, entry, exc)
        return None


def write(entry: Path, obj: Any, key: str, what: str) -> None:
    """``save``, warning instead of failing (a full disk must not fail the run that computed ``obj``)."""
    try:
        save(entry, obj, key)
    except NotCacheable as exc:
        log.warning("%s %r not cached: %s", what, key, exc)
    except OSError as exc:
        log.warning("%s %r not cached (%s: %s)", what, key, type(exc).__name__, exc)


def load(entry: Path, key: str) -> Any:
    """The cached object, verified; raises CacheRefused (with the reason) otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = entry / SIDECAR
    if not path.is_file():
        raise CacheRefused("no cache entry")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheRefused(f"{path.name} is not readable JSON ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT or sidecar.get("version") != VERSION:
        raise CacheRefused(f"{path.name} is not a {FORMAT} v{VERSION} sidecar")
    if sidecar.get("key") != key:
        raise CacheRefused(f"{path.name} holds {sidecar.get('key')!r}, not {key!r}")
    name = str(sidecar.get("tensor_file", ""))
    tensor_file = entry / name
    if Path(name).name != name or not name.endswith(".safetensors") or not tensor_file.is_file():
        raise CacheRefused(f"the tensor file {name!r} named by {path.name} is missing")
    if tensor_file.stat().st_size != sidecar.get("tensors_bytes") or _sha256(tensor_file) != sidecar.get("tensors_sha256"):
        raise CacheRefused(f"{name} does not match the sha256 recorded in {path.name} (damaged or replaced)")
    try:
        tensors = load_file(tensor_file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CacheRefused(f"{name} is not a readable safetensors file ({exc})") from None
    try:
        return _Decoder(tensors)(sidecar.get("tree"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheRefused(f"{path.name} has a malformed structure ({type(exc).__name__}: {exc})") from None
