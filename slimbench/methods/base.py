"""The Method protocol, its registration decorator, what a method returns, and the reports.

A method is a class registered with ``@register_method`` (which supplies the boilerplate: name,
config class, calibration need, model kinds, family, and which model *forms* it can follow), with
a frozen config dataclass validated in ``__post_init__``, an optional pre-load ``check(adapter)``,
and ``apply(bundle, calib) -> MethodResult``. It never does I/O, tracker logging, or walks
``model.model.layers`` itself.

Two sorts:

* **weight methods** change weights or modules;
* **runtime methods** change how the model runs by installing named, removable hooks
  (``bundle.hooks``, ``slimbench.hooks``); removing them restores the model's outputs exactly.

Methods that work block by block through the calibration engine implement ``plan()`` (a
``SequentialPlan``: the steps per block and how to finish); ``apply`` then runs that plan, and a
pipeline fuses consecutive such stages into one engine pass.

Forms: what a model's layers are after a stage (``FORMS``). Every method says which forms it can
work on (``accepts``) and which form it produces; a pipeline whose stage meets a form it does not
accept (e.g. SparseGPT after GPTQ: quantized weights cannot be pruned) is refused before loading.

The harness, not the method, measures sizes, sparsity and per-layer parameters before and after
``apply`` and builds the typed ``StageReport``/``CompressionReport``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from slimbench.data.sampler import CalibrationSet
from slimbench.errors import ConfigError
from slimbench.models.adapters import Adapter
from slimbench.models.bundle import ModelBundle, ModelShape
from slimbench.records import CHANGES, LayerReport  # noqa: F401  (re-exported for methods)
from slimbench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from slimbench.calibration import EngineReport, Step

# How a compressed model executes, and whether that path can be faster than dense.
EXECUTION_PATHS: dict[str, str] = {
    "dense": "unchanged dense model",
    "masked-dense": "zeros stored in dense tensors: no speedup expected",
    "sliced-dense": "physically smaller dense layers (heads/neurons removed)",
    "dropped-modules": "whole attention/MLP sublayers or blocks removed",
    "low-rank": "linears replaced by two smaller factors",
    "int8-kernel": "packed int8 weights computed by an int8 kernel",
    "int4-kernel": "packed int4 weights computed by an int4 kernel",
    "cached-steps": "module outputs reused across diffusion steps",
    "routed-experts": "a data-dependent subset of experts computed per token",
    "simulated": "numerics emulated in floating point: no speedup, no memory saving",
}
NO_SPEEDUP_PATHS = ("dense", "masked-dense", "simulated")

# What a model's layers are after a stage.
FORMS: dict[str, str] = {
    "dense": "plain float weights",
    "masked": "plain float weights holding pruned zeros",
    "sliced": "physically smaller plain layers",
    "dropped": "sublayers or blocks removed",
    "factored": "linears replaced by low-rank factors",
    "quantized": "packed integer weights",
    "hooked": "runtime hooks installed",
}
PLAIN_FORMS = frozenset({"dense", "masked", "sliced", "dropped"})
ALL_FORMS = frozenset(FORMS)

@dataclass
class MethodResult:
    execution_path: str
    details: dict = field(default_factory=dict)  # method-level decisions, scores, targets
    notes: list[str] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.execution_path not in EXECUTION_PATHS:
            raise ValueError(f"unknown execution path {self.execution_path!r} (known: {', '.join(EXECUTION_PATHS)})")


@dataclass
class SequentialPlan:
    """A method's block-by-block work in the calibration engine: ``steps(i, block)`` run in
    order on block ``i``; ``finish(report)`` builds the result after the last block."""

    steps: Callable[[int, "nn.Module"], list["Step"]]
    finish: Callable[["EngineReport"], MethodResult]
    propagate_error: bool = True
    desc: str = "calibrate"


def run_sequential(bundle: ModelBundle, calib: CalibrationSet, plans: list[SequentialPlan]) -> list[MethodResult]:
    """Run one or more plans in ONE engine pass: per block, every plan's steps in order."""
    from slimbench.calibration import CalibrationEngine

    if len({p.propagate_error for p in plans}) != 1:
        raise ValueError("plans fused into one engine pass must agree on propagate_error")
    engine = CalibrationEngine(bundle, calib)
    report = engine.run(lambda i, block: [s for p in plans for s in p.steps(i, block)],
                        propagate_error=plans[0].propagate_error, desc="+".join(p.desc for p in plans))
    return [p.finish(report) for p in plans]


class Method(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]
    requires_calibration: ClassVar[bool]
    kinds: ClassVar[tuple[str, ...]]
    family: ClassVar[str]
    sort: ClassVar[str]
    accepts: ClassVar[frozenset]
    produces: ClassVar[frozenset]
    config: Any

    def check(self, adapter: Adapter) -> None:
        """Pre-load structural check (e.g. required linear roles); raise ConfigError."""

    def after(self, forms: frozenset) -> Any: ...

    def check_shape(self, shape: ModelShape) -> None:
        """Pre-load check against the sizes the model's config states (e.g. how many blocks
        there are to drop); fields may be None (unknown): then nothing is checked."""

    def plan(self, bundle: ModelBundle, calib: CalibrationSet | None) -> SequentialPlan | None: ...

    def apply(self, bundle: ModelBundle, calib: CalibrationSet | None) -> MethodResult: ...


class MethodBase:
    """What ``register_method`` gives every method: the constructor, no-op ``check`` and
    ``check_shape``, and an ``apply`` that runs ``plan()`` through the calibration engine."""

    name: ClassVar[str]
    Config: ClassVar[type]
    requires_calibration: ClassVar[bool] = False
    kinds: ClassVar[tuple[str, ...]] = ("causal_lm",)
    family: ClassVar[str] = ""
    sort: ClassVar[str] = "weight"
    accepts: ClassVar[frozenset] = PLAIN_FORMS
    produces: ClassVar[frozenset] = frozenset()

    def __init__(self, config: Any) -> None:
        self.config = config

    def check(self, adapter: Adapter) -> None:
        return None

    def check_shape(self, shape: ModelShape) -> None:
        return None

    def after(self, forms: frozenset) -> "MethodBase":
        """This method as it runs on a model whose layers have ``forms`` (what the earlier
        stages of a pipeline produced; ``{"dense"}`` for a single method): settings whose
        default depends on them are resolved here, before the run's identity is computed."""
        return self

    def plan(self, bundle: ModelBundle, calib: CalibrationSet | None) -> SequentialPlan | None:
        return None

    def apply(self, bundle: ModelBundle, calib: CalibrationSet | None) -> MethodResult:
        plan = self.plan(bundle, calib)
        if plan is None:
            raise NotImplementedError(f"method {self.name!r} implements neither apply() nor plan()")
        return run_sequential(bundle, calib, [plan])[0]

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the method file's docstring (its title and citation)."""
        doc = sys.modules[cls.__module__].__doc__ or ""
        return " ".join(doc.strip().split("\n\n")[0].split())


METHODS: Registry[type] = Registry("method", entry_point_group="slimbench.methods")
SORTS = ("weight", "runtime")


def register_method(name: str, *, config: type, family: str, produces: tuple[str, ...] | str = (), calibration: bool = False,
                    kinds: tuple[str, ...] = ("causal_lm",), accepts: frozenset | set | None = None, sort: str = "weight",
                    registry: Registry | None = None):
    """Class decorator: fills the Method attributes and registers the class under ``name``
    (in ``METHODS``, or in ``registry``).

    ``produces``: the forms the model's layers take after this method (``FORMS``); ``accepts``:
    the forms it can work on (default: plain float layers; runtime methods: every form).
    """
    produced = frozenset([produces] if isinstance(produces, str) else produces)
    unknown = (produced | frozenset(accepts or ())) - ALL_FORMS
    if unknown or sort not in SORTS:
        raise ValueError(f"method {name!r}: unknown forms {sorted(unknown)} or sort {sort!r}")

    def decorate(cls: type) -> type:
        cls.name, cls.Config, cls.family, cls.sort = name, config, family, sort
        cls.requires_calibration, cls.kinds = calibration, tuple(kinds)
        cls.produces = produced | ({"hooked"} if sort == "runtime" else frozenset())
        cls.accepts = frozenset(accepts) if accepts is not None else (ALL_FORMS if sort == "runtime" else PLAIN_FORMS)
        (METHODS if registry is None else registry).register(name, cls)
        return cls

    return decorate


def forms_before(stages: list[type]) -> list[frozenset]:
    """The forms of the model's layers each stage meets (``{"dense"}`` for the first)."""
    out, forms = [], frozenset({"dense"})
    for cls in stages:
        out.append(forms)
        forms = forms | cls.produces
    return out


def check_stage_order(stages: list[type]) -> None:
    """Refuse a pipeline in which a stage meets a model form it cannot work on."""
    for i, (cls, forms) in enumerate(zip(stages, forms_before(stages))):
        bad = forms - cls.accepts
        if bad:
            after = ", ".join(s.name for s in stages[:i])
            raise ConfigError(
                f"pipeline stage {i} ({cls.name}) cannot follow {after}: after them the model has "
                f"{' and '.join(FORMS[f] for f in sorted(bad))}, which {cls.name} cannot work on "
                f"(it works on: {', '.join(sorted(cls.accepts))})"
            )


def supports(method_cls: type, kind: str) -> bool:
    return kind in method_cls.kinds
