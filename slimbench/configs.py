"""Turning Hydra config nodes into validated frozen dataclasses, with one-line errors.

One mechanism for every config node (method, calibration, evaluators, model loaders, tracker,
and the top-level keys in ``RunSettings``): the dataclass field types drive the parsing.

* ``bool``: ``true``/``false`` only (YAML/Hydra booleans, or those words as strings from an
  interpolation); ``sym=no``, ``force=maybe`` or ``act_order=1`` are errors, never truthy.
* ``int``: an integer (not a bool, not 4.5 or 4.0), or a string of digits (``${oc.env:...}``).
* ``float``: an int or a float (YAML gives ``0`` for ``0.0``; it becomes ``0.0``), or a string
  that parses as one; never a bool, never NaN or infinite.
* ``str``: a string (an integer becomes its digits: ``model.revision=1234``).
* ``X | None``: null, or an ``X``. ``tuple[...]``: a list (a single value is a one-item list).
  ``dict``: a mapping. A nested dataclass: a mapping, built the same way.

Values arrive as Hydra parsed them: typed where Hydra could parse the command-line text, strings
where it could not (``abc``, ``maybe``). The dataclass's ``__post_init__`` then checks ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from slimbench.errors import ConfigError

T = TypeVar("T")
_INT_TEXT = re.compile(r"[+-]?\d+")


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (leaves other values alone); an interpolation
    that cannot be resolved is a one-line error naming the key."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        return value
    if not isinstance(value, (DictConfig, ListConfig)):
        return value
    try:
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key}: cannot resolve its value ({first})" if key else f"config cannot be resolved: {first}") from None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def unknown_keys(cls: type, params: dict) -> list[str]:
    allowed = set(field_names(cls))
    return [k for k in params if k not in allowed]


def unknown_key_message(key: str, known: list[str], owner: str = "", what: str = "parameter") -> str:
    """``<owner>: unknown <what> 'x' (<what>s: ...); did you mean 'y'?``"""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    prefix = f"{owner}: " if owner else ""
    return f"{prefix}unknown {what} {key!r} ({what}s: {', '.join(known) or 'none'}){hint}"


def build_dataclass(cls: type[T], params: dict, owner: str, what: str = "parameter") -> T:
    """``cls(**params)`` with every value parsed by its field's type, and clear one-line errors
    for unknown keys, wrong types and bad values.

    ``what="parameter"``: the messages name the parameter and start with ``owner`` (``method
    rtn: sym must be ...``); ``what="key"`` (config keys): they name the dotted key
    (``paths.results_dir ...``, ``owner`` being the parent key or "")."""
    params = {k: to_plain(v) for k, v in dict(params).items()}
    names = field_names(cls)
    keyed = what == "key"

    def full(key: str) -> str:
        return f"{owner}.{key}" if keyed and owner else key

    prefix = f"{owner}: " if owner and not keyed else ""
    for key in unknown_keys(cls, params):
        if keyed:
            raise ConfigError(unknown_key_message(full(str(key)), [full(n) for n in names], what="key"))
        raise ConfigError(unknown_key_message(str(key), names, owner, what))
    hints = _field_types(cls)
    values = {}
    for key, value in params.items():
        try:
            values[key] = coerce(value, hints.get(key, Any), full(key))
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
    try:
        return cls(**values)
    except ConfigError as exc:
        message = str(exc)
        if keyed and owner and message.split(" ", 1)[0] in names:  # "nsamples must be ..." -> "calib.nsamples must be ..."
            message = f"{owner}.{message}"
        raise ConfigError(f"{prefix}{message}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}{exc}") from None


@lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved: parse nothing
        return {}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` parsed as type ``tp`` (see the module docstring); raises ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce(value, options[0], name)
        return value  # a union of several types: left to __post_init__
    if tp is bool:
        return _bool(value, name)
    if tp is int:
        return _int(value, name)
    if tp is float:
        return _float(value, name)
    if tp is str:
        return _str(value, name)
    if tp is tuple or origin is tuple:
        return _tuple(value, args, name)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping (key: value, ...), got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping (key: value, ...), got {value!r}")
        return build_dataclass(tp, value, owner=name, what="key")
    return value


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    raise ConfigError(f"{name} must be an integer, got {value!r}")


def _float(value: Any, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    else:
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def _str(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{name} must be a string, got {value!r}")


def _tuple(value: Any, args: tuple, name: str) -> tuple:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not args:
        return tuple(items)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(items))
    if len(items) != len(args):
        raise ConfigError(f"{name} must list {len(args)} values, got {value!r}")
    return tuple(coerce(v, t, f"{name}[{i}]") for i, (v, t) in enumerate(zip(items, args)))


def config_to_dict(obj: Any) -> dict:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return _jsonable(dataclasses.asdict(obj))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# -- the top-level keys of conf/config.yaml -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PathsConfig:
    data_dir: str | None = None  # None: the Hugging Face hub
    results_dir: str = "results/runs"
    cache_dir: str = "~/.cache/slimbench"

    def __post_init__(self) -> None:
        if self.data_dir is not None and not self.data_dir.strip():
            raise ConfigError("paths.data_dir is empty: set it to a directory holding the datasets, or to null to use the "
                              "Hugging Face hub (is SLIMBENCH_DATA_DIR set but empty?)")
        for key in ("results_dir", "cache_dir"):
            if not getattr(self, key).strip():
                raise ConfigError(f"paths.{key} is empty: set it to a directory")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The top-level keys of a run's config (conf/config.yaml states the same defaults). The
    group nodes (model, method, eval, calib, tracker) are validated by their own owners."""

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # None: torch's default
    force: bool = False
    fuse_stages: bool = True
    offload: bool = False  # weights stay in CPU memory; calibration moves one block at a time to `device`
    save_dir: str | None = None
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    model: dict | None = None
    method: dict | None = None
    eval: dict | None = None
    calib: dict | None = None
    tracker: dict | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or null (torch's default), got {self.threads}")
        if self.save_dir is not None and not self.save_dir.strip():
            raise ConfigError("save_dir is empty: set it to a directory, or to null to not save the model")
        check_device(self.device)
        if self.offload and self.device == "cpu":
            raise ConfigError("offload=true keeps the weights in CPU memory and computes each block on `device`; "
                              "with device=cpu there is nothing to offload (use device=cuda, or offload=false)")


def check_dir_path(value: str, key: str, create: bool) -> Path:
    """A directory setting: no regular file in the way; created (and writable) if ``create``."""
    path = Path(value).expanduser()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}={value!r}: {str(parent)!r} is a file, not a directory")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{key}={value!r} cannot be created ({exc.strerror or exc})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={value!r} is not writable")
    return path


def run_settings(cfg: dict) -> RunSettings:
    """The validated top-level keys of a composed config (an unknown key gets a suggestion)."""
    return build_dataclass(RunSettings, cfg, owner="", what="key")


def check_device(device: str) -> None:
    """A device torch knows and this machine has (cpu, cuda[:i], mps)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device (use cpu, cuda, cuda:<i> or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but CUDA is not available on this machine (torch {torch.__version__}"
                              f"{'' if torch.version.cuda else ', a CPU-only build'}); use device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={device} but MPS is not available on this machine; use device=cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported (use cpu, cuda, cuda:<i> or mps)")
