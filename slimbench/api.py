"""slimbench's Python API: what the ``slimbench`` command does, for notebooks and other tools.

    import slimbench

    result = slimbench.experiment(model="smollm2-135m", method="wanda", **{"method.sparsity": 0.5})
    result.metrics["perplexity.perplexity"], result.record, result.model

    compressed = slimbench.compress(my_hf_model, "gptq", tokenizer=tok, calibration={"nsamples": 32}, group_size=64)
    compressed.report, compressed.save_pretrained("out/")

    slimbench.results("results/runs")           # one row per run: param.*, metrics, *.stderr, protocol.*
    slimbench.load_pretrained("out/")          # a saved model, no dense model needed

* ``experiment(*overrides, **overrides)``: one run, composed exactly as the command composes it
  (Hydra overrides; ``key=value`` strings or keyword arguments, a ``__`` in a keyword standing for
  a dot: ``method__sparsity=0.5``; ``pipeline=["wanda", "gptq"]``). It validates before loading
  weights (``ConfigError``, one line), skips a run whose successful record the store already holds
  (``force=True`` re-runs) and returns the record, its metrics and the compressed model.
* ``compress(model, method, ...)``: a named method, or a pipeline of them, applied to your own
  model (a transformers causal LM, or any ``nn.Module`` an adapter covers) with a calibration set
  (slimbench's corpora by name and size, or your own token windows); returns the typed report.
* ``results(results_dir)``: the store as a pandas DataFrame.
* ``describe_methods()`` / ``describe_evaluators()`` / ``describe_models()``: what the registries
  and presets hold (what ``slimbench methods`` prints).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from slimbench.checkpoint import SavedModel, load_bundle, load_pretrained, save_pretrained
from slimbench.errors import ConfigError

DEFAULT_RESULTS_DIR = "results/runs"


# -- one experiment --------------------------------------------------------------------------------
@dataclass
class ExperimentResult:
    status: str  # ok | failed | skipped
    run_id: str
    record: Any  # RunRecord (None when skipped without a stored record)
    path: Path | None  # the record file
    bundle: Any = None  # the compressed ModelBundle (None when the run was skipped)
    reason: str = ""

    @property
    def model(self):
        """The compressed model (None when the run was skipped: ``force=True`` runs it again)."""
        return None if self.bundle is None else self.bundle.model

    @property
    def metrics(self) -> dict[str, float | None]:
        return {} if self.record is None else {m.key: m.value for m in self.record.metrics}

    @property
    def stderrs(self) -> dict[str, float]:
        return {} if self.record is None else {m.key: m.stderr for m in self.record.metrics if m.stderr is not None}


def overrides_from(args: Iterable[str], kwargs: dict[str, Any]) -> list[str]:
    """Hydra override strings from ``key=value`` strings and keyword arguments."""
    out = list(args)
    for key, value in kwargs.items():
        out.append(f"{key.replace('__', '.')}={_hydra_value(value)}")
    return out


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    text = str(value)
    if isinstance(value, (str, Path)) and not re.fullmatch(r"[\w./:@+-]*", text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's quoted string
    return text


def compose_config(overrides: list[str]) -> dict:
    """The resolved run config for these overrides: the command's pre-flight (unknown choices
    with did-you-mean, pipelines, validated-node overrides), then Hydra's compose."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from slimbench.cli import CONF_DIR, preflight

    hydra_overrides = preflight(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=hydra_overrides)
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    return OmegaConf.to_container(cfg, resolve=True)


def experiment(*overrides: str, **kwargs: Any) -> ExperimentResult:
    """One run (see the module docstring): ``experiment("method=wanda", model="tiny-llama", method__sparsity=0.5)``."""
    from slimbench.run import run_experiment

    cfg = compose_config(overrides_from(overrides, kwargs))
    outcome = run_experiment(cfg)
    return ExperimentResult(outcome.status, outcome.run_id, outcome.record, outcome.path, outcome.bundle, outcome.reason)


# -- compressing your own model ----------------------------------------------------------------------
@dataclass
class Compressed:
    bundle: Any  # ModelBundle
    report: Any  # CompressionReport
    stages: list[dict] = field(default_factory=list)

    @property
    def model(self):
        return self.bundle.model

    def save_pretrained(self, directory: str | os.PathLike) -> SavedModel:
        return save_pretrained(self.bundle, directory, stages=self.stages)


def compress(model: Any, method: str | list, *, tokenizer: Any = None, calibration: Any = None, data_dir: str | None = None,
             name: str | None = None, fuse: bool = True, **params: Any) -> Compressed:
    """Apply a named method (``method="wanda"``, parameters as keywords) or a pipeline
    (``method=[("wanda", {"pattern": "2:4"}), ("gptq", {"bits": 4})]``) to ``model`` in place.

    ``model``: a transformers causal LM (or any model an adapter covers: ``model.config.model_type``),
    or a ``ModelBundle``. ``calibration`` (for methods that need it): a dict of calibration
    settings (``{"dataset": "wikitext2", "nsamples": 32, "seqlen": 2048, "seed": 0}``; the data
    come from ``data_dir``/``SLIMBENCH_DATA_DIR`` or the hub), a ``CalibrationSet``, or your own
    token windows as a LongTensor [nsamples, seqlen].
    """
    from slimbench.methods.base import check_stage_order
    from slimbench.run import compress as run_compress

    bundle = _as_bundle(model, tokenizer, name)
    stages = _stages(method, params)
    check_stage_order([type(m) for m in stages])
    for m in stages:
        if bundle.kind not in m.kinds:
            raise ConfigError(f"method {m.name!r} does not support {bundle.kind} models (supports: {', '.join(m.kinds)})")
        m.check(bundle.adapter)
    calib = _calibration(bundle, calibration, data_dir) if any(m.requires_calibration for m in stages) else None
    report = run_compress(stages, bundle, calib, fuse=fuse)
    from slimbench.configs import config_to_dict

    return Compressed(bundle, report, [{"name": m.name, "config": config_to_dict(m.config)} for m in stages])


def _stages(method: str | list, params: dict) -> list:
    from slimbench.configs import build_dataclass
    from slimbench.methods import METHODS

    if isinstance(method, str):
        specs = [(method, params)]
    else:
        if params:
            raise ConfigError("a pipeline takes its parameters per stage: method=[('wanda', {...}), ('gptq', {...})]")
        specs = [(s, {}) if isinstance(s, str) else (s[0], dict(s[1])) for s in method]
    stages = []
    for i, (name, kwargs) in enumerate(specs):
        try:
            cls = METHODS.get(name)
        except KeyError as exc:
            raise ConfigError(str(exc)) from None
        owner = f"method {name}" if len(specs) == 1 else f"pipeline stage {i} ({name})"
        stages.append(cls(build_dataclass(cls.Config, kwargs, owner=owner)))
    return stages


def _as_bundle(model: Any, tokenizer: Any, name: str | None):
    from slimbench.models.adapters import ADAPTERS
    from slimbench.models.bundle import ModelBundle, ModelSource
    from slimbench.models.io import MODEL_IO

    if isinstance(model, ModelBundle):
        return model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ConfigError(f"model_type {model_type!r} is not covered by an adapter (covered: {', '.join(ADAPTERS.names())})")
    adapter = ADAPTERS.get(model_type)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    kind = MODEL_IO.get(adapter.io).kind
    label = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    source = ModelSource(name=str(label), kind=kind, loader="user", model_type=model_type, identity={"class": type(model).__name__}, dtype=dtype)
    return ModelBundle(model=model.eval(), tokenizer=tokenizer, kind=kind, adapter=adapter, source=source)


def _calibration(bundle: Any, calibration: Any, data_dir: str | None):
    import torch

    from slimbench.configs import build_dataclass
    from slimbench.data.corpora import resolve_corpus
    from slimbench.data.sampler import CalibConfig, CalibrationSet, build_calibration_set

    if isinstance(calibration, CalibrationSet):
        return calibration
    if isinstance(calibration, torch.Tensor):  # the user's own token windows [nsamples, seqlen]
        windows = calibration.long()
        inputs = [bundle.io.sample(windows[i : i + 1]) for i in range(windows.shape[0])]
        return CalibrationSet(inputs=inputs, recipe={"dataset": "user tokens", "nsamples": windows.shape[0], "seqlen": windows.shape[1]},
                              tokens=windows)
    config = calibration if isinstance(calibration, CalibConfig) else build_dataclass(CalibConfig, dict(calibration or {}), owner="calibration")
    if bundle.tokenizer is None:
        raise ConfigError("calibration from a corpus needs the model's tokenizer: compress(..., tokenizer=...)")
    ref = resolve_corpus(config.dataset, config.split, data_dir or os.environ.get("SLIMBENCH_DATA_DIR"))
    return build_calibration_set(config, ref, bundle.tokenizer)


# -- results ---------------------------------------------------------------------------------------
def results(results_dir: str | os.PathLike | None = None, latest_only: bool = True):
    """Every record of the store as a DataFrame: one row per run (the latest ok attempt), one
    column per metric and its ``.stderr``, one per method parameter (``param.<name>``, numeric
    where the parameter is), per evaluator protocol field (``protocol.<evaluator>.<field>``)."""
    from slimbench.store import ResultStore

    return ResultStore(results_dir or os.environ.get("SLIMBENCH_RESULTS_DIR", DEFAULT_RESULTS_DIR)).dataframe(latest_only=latest_only)


# -- what is there ---------------------------------------------------------------------------------
def describe_methods(name: str | None = None) -> list[dict]:
    from slimbench.catalog import methods

    return methods(name)


def describe_evaluators(name: str | None = None) -> list[dict]:
    from slimbench.catalog import evaluators

    return evaluators(name)


def describe_models(name: str | None = None) -> list[dict]:
    from slimbench.catalog import models

    return models(name)


__all__ = ["Compressed", "ExperimentResult", "SavedModel", "compress", "describe_evaluators", "describe_methods",
           "describe_models", "experiment", "load_bundle", "load_pretrained", "results", "save_pretrained"]
