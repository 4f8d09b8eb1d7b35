"""Declared parameters: a config field says once what it means and which values are valid.

    @dataclass(frozen=True)
    class WandaConfig:
        sparsity: float = param(0.5, "fraction of weights removed per output row", ge=0, lt=1)

        def __post_init__(self) -> None:
            check_params(self)  # every declared range and choice; checks across fields follow

The declaration is the one source of truth: ``check_params`` validates against it (one-line
``ConfigError``: ``sparsity must be in [0, 1), got 1.5``) and ``describe`` lists it (type,
default, valid values, meaning) for ``slimbench methods <name>`` and the other listings. A
plain field (no ``param``) is described by its type and default only.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from slimbench.errors import ConfigError

_KEY = "slimbench.param"


@dataclass(frozen=True)
class Valid:
    """The valid values of one parameter: a numeric range and/or a set of choices, ``also``
    values outside the range (e.g. -1 = per row), and whether null is allowed."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    also: tuple = ()
    nullable: bool = False

    @property
    def ranged(self) -> bool:
        return any(v is not None for v in (self.ge, self.gt, self.le, self.lt))

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if any(_same(value, v) for v in self.also):
            return True
        if self.choices is not None:
            return any(_same(value, c) for c in self.choices)
        if self.ranged:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return True

    def text(self) -> str:
        """``in [0, 1)``, ``>= 1``, ``one of 2, 3, 4, 8``, ``-1 or >= 8``, ``null or >= 1``."""
        parts = [", ".join(_show(v) for v in self.also)] if self.also else []
        if self.choices is not None and all(isinstance(c, bool) for c in self.choices):
            parts.append(" or ".join(_show(c) for c in self.choices))
        elif self.choices is not None:
            parts.append("one of " + ", ".join(_show(v) for v in self.choices))
        elif self.ranged:
            parts.append(_range_text(self))
        text = " or ".join(parts)
        return f"null or {text}" if self.nullable and text else text


def _same(value: Any, choice: Any) -> bool:
    """Equal, and a bool only equals a bool (``True == 1`` is no valid bit width)."""
    return isinstance(value, bool) == isinstance(choice, bool) and type(value) in (type(choice), int, float) and value == choice


def _show(value: Any) -> str:
    """A value as it is written in a config (YAML): true, null, 'text', 0.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_text(v: Valid) -> str:
    low = ("[", v.ge) if v.ge is not None else ("(", v.gt) if v.gt is not None else None
    high = ("]", v.le) if v.le is not None else (")", v.lt) if v.lt is not None else None
    if low and high:
        return f"in {low[0]}{_show(low[1])}, {_show(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_show(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_show(high[1])}"


def param(default: Any = dataclasses.MISSING, doc: str = "", *, ge=None, gt=None, le=None, lt=None, choices=None, also=(),
          nullable: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its meaning and valid values (see the module docstring)."""
    valid = Valid(ge=ge, gt=gt, le=le, lt=lt, choices=None if choices is None else tuple(choices), also=tuple(also), nullable=nullable)
    metadata = {_KEY: {"doc": doc, "valid": valid}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_params(config: Any) -> None:
    """Every declared parameter of ``config`` against its valid values; ConfigError (one line)."""
    for f in dataclasses.fields(config):
        declared = f.metadata.get(_KEY)
        if declared is None:
            continue
        value = getattr(config, f.name)
        valid: Valid = declared["valid"]
        if _is_int(f.type) and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{f.name} must be an integer {valid.text()}".rstrip() + f", got {value!r}")
        if not valid.accepts(value):
            raise ConfigError(f"{f.name} must be {valid.text()}, got {value!r}")


def _is_int(annotation: Any) -> bool:
    """An ``int`` or ``int | None`` field (annotations may be strings under postponed evaluation)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace(" ", "") in ("int", "int|None", "Optional[int]")


def show(value: Any) -> str:
    """A default as it is written in a config (YAML spelling; tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return _show(value)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    valid: str
    doc: str


def describe(cls: type) -> list[ParamInfo]:
    """The parameters of a config dataclass: name, type, default, valid values, meaning."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints = _type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        declared = f.metadata.get(_KEY) or {}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        valid = declared.get("valid")
        out.append(ParamInfo(f.name, _type_name(hints.get(f.name, f.type)), default, valid.text() if valid else "", declared.get("doc", "")))
    return out


def _type_hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # forward references that do not resolve: fall back to the annotation text
        return {}


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")
