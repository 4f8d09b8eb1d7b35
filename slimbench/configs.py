"""Turning Hydra config nodes into validated frozen dataclasses, with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

from slimbench.errors import ConfigError

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (leaves other values alone)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            from omegaconf.errors import OmegaConfBaseException

            try:
                return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            except OmegaConfBaseException as exc:
                first = str(exc).strip().splitlines()[0]
                raise ConfigError(f"config cannot be resolved: {first}") from None
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def unknown_keys(cls: type, params: dict) -> list[str]:
    allowed = set(field_names(cls))
    return [k for k in params if k not in allowed]


def build_dataclass(cls: type[T], params: dict, owner: str) -> T:
    """``cls(**params)`` with clear errors for unknown keys, wrong types and bad values."""
    params = {k: to_plain(v) for k, v in dict(params).items()}
    names = field_names(cls)
    for key in unknown_keys(cls, params):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{owner}: unknown parameter {key!r} (parameters: {', '.join(names) or 'none'}){hint}")
    try:
        return cls(**params)
    except ConfigError as exc:
        raise ConfigError(f"{owner}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def config_to_dict(obj: Any) -> dict:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return _jsonable(dataclasses.asdict(obj))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
