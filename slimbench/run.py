"""One run: validate -> (skip?) -> load -> calibrate -> compress -> evaluate -> record.

Everything that can be checked is checked in ``plan_run`` before any weights load: the
method and its parameters, the model's identity and its adapter, method/evaluator support
for the model kind, the data the run will read. A ``ConfigError`` there is bad input and is
reported in one line. Past that point every failure is recorded: the record is written in a
``finally`` block with status ``failed``, the stage, and the error; the tracker is closed.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimbench._system import Stopwatch, measure_peak_rss
from slimbench.configs import build_dataclass, config_to_dict, field_names, to_plain, unknown_keys
from slimbench.data.corpora import CorpusRef, check_data_dir, resolve_corpus
from slimbench.data.sampler import CalibConfig, CalibrationSet, build_calibration_set
from slimbench.errors import ConfigError
from slimbench.evaluation import EVALUATORS, EvalContext
from slimbench.evaluation.size import footprint
from slimbench.methods import METHODS, CompressionReport
from slimbench.methods.base import NO_SPEEDUP_PATHS
from slimbench.models.adapters import adapter_for
from slimbench.models.bundle import ModelSource
from slimbench.models.loaders import LoadContext, resolve_model
from slimbench.records import RunRecord, environment, new_attempt_id, protocol_fingerprint, stable_hash
from slimbench.store import CALIB_CACHE_NOTE, ResultStore
from slimbench.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A validated run: everything needed to execute it, resolved without loading weights."""

    cfg: dict
    source: ModelSource
    loader: Any
    loader_config: Any
    method: Any
    method_params: dict
    ignored_params: dict
    evaluators: list[tuple[str, Any]]
    suite: str
    calib_config: CalibConfig | None
    calib_ref: CorpusRef | None
    data: dict
    eval_ctx: EvalContext
    load_ctx: LoadContext
    run_id: str
    tracker: Any = None
    identity: dict = field(default_factory=dict)


@dataclass
class RunOutcome:
    status: str  # ok | failed | skipped
    run_id: str
    record: dict | None = None
    path: Path | None = None
    reason: str = ""


# -- validation --------------------------------------------------------------------------------
def _method_params(method_cls: type, params: dict, lenient: bool) -> tuple[dict, dict]:
    """Split params into (accepted, ignored). Lenient (multirun grids such as
    ``method=dense,magnitude method.sparsity=0.3,0.5``): a parameter this method lacks but
    another registered method defines is ignored and recorded; anything else is an error."""
    extra = unknown_keys(method_cls.Config, params)
    if not lenient or not extra:
        return params, {}
    known_elsewhere = {n for _, cls in METHODS.items() for n in field_names(cls.Config)}
    ignored = {k: params[k] for k in extra if k in known_elsewhere}
    return {k: v for k, v in params.items() if k not in ignored}, ignored


def plan_run(cfg: dict, lenient_method_params: bool = False) -> RunPlan:
    paths = cfg.get("paths", {})
    data_dir = check_data_dir(paths.get("data_dir"))
    load_ctx = LoadContext(cache_dir=Path(str(paths.get("cache_dir", "~/.cache/slimbench"))).expanduser(), device=cfg.get("device", "cpu"))

    # method (cheapest checks first: a bad method parameter fails before anything else)
    method_node = dict(cfg.get("method") or {})
    method_name = method_node.pop("name", None) or "?"
    try:
        method_cls = METHODS.get(method_name)
    except KeyError as exc:
        raise ConfigError(str(exc)) from None
    accepted, ignored = _method_params(method_cls, method_node, lenient_method_params)
    method = method_cls(build_dataclass(method_cls.Config, accepted, owner=f"method {method_name}"))

    # evaluators
    eval_node = dict(cfg.get("eval") or {})
    suite = eval_node.get("suite", "custom")
    ev_nodes = {k: v for k, v in dict(eval_node.get("evaluators") or {}).items() if v is not None}
    if not ev_nodes:
        raise ConfigError("the eval suite lists no evaluators")
    evaluators = []
    for ev_name, ev_params in ev_nodes.items():
        try:
            ev_cls = EVALUATORS.get(ev_name)
        except KeyError as exc:
            raise ConfigError(str(exc)) from None
        evaluators.append((ev_name, ev_cls(build_dataclass(ev_cls.Config, ev_params or {}, owner=f"evaluator {ev_name}"))))

    # model identity and structure (no weights)
    source, loader, loader_config = resolve_model(dict(cfg.get("model") or {}), load_ctx)
    if source.kind not in method_cls.kinds:
        raise ConfigError(f"method {method_name!r} does not support {source.kind} models (supports: {', '.join(method_cls.kinds)})")
    for ev_name, ev in evaluators:
        if source.kind not in ev.kinds:
            raise ConfigError(
                f"evaluator {ev_name!r} does not support {source.kind} models (supports: {', '.join(ev.kinds)}); "
                "choose another eval suite"
            )
    method.check(adapter_for(source.model_type))

    # data the run will read
    threads = int(cfg.get("threads") or torch.get_num_threads())
    eval_ctx = EvalContext(
        data_dir=data_dir, device=load_ctx.device, seed=int(cfg.get("seed", 0)), threads=threads, cache_dir=load_ctx.cache_dir
    )
    data: dict = {}
    for _, ev in evaluators:
        data.update(ev.check(eval_ctx))
    calib_config = calib_ref = None
    if method_cls.requires_calibration:
        calib_config = build_dataclass(CalibConfig, dict(cfg.get("calib") or {}), owner="calib")
        calib_ref = resolve_corpus(calib_config.dataset, calib_config.split, paths.get("data_dir"))
        data[f"calibration:{calib_config.dataset}/{calib_config.split}"] = calib_ref.fingerprint()

    tracker = make_tracker(cfg.get("tracker") or {"name": "none"})
    identity = {
        "model": source.to_dict(),
        "method": {"name": method_name, "config": config_to_dict(method.config)},
        "calibration": None if calib_config is None else config_to_dict(calib_config),
        "eval": {"suite": suite, "evaluators": {n: {"version": e.version, "config": config_to_dict(e.config)} for n, e in evaluators}},
        "data": data,
        "seed": eval_ctx.seed,
        "device": eval_ctx.device,
        "threads": threads,
    }
    return RunPlan(
        cfg=cfg,
        source=source,
        loader=loader,
        loader_config=loader_config,
        method=method,
        method_params=accepted,
        ignored_params=ignored,
        evaluators=evaluators,
        suite=suite,
        calib_config=calib_config,
        calib_ref=calib_ref,
        data=data,
        eval_ctx=eval_ctx,
        load_ctx=load_ctx,
        run_id=stable_hash(identity),
        tracker=tracker,
        identity=identity,
    )


# -- execution ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def execute(plan: RunPlan, store: ResultStore, tracker: Tracker, invocation_id: str | None = None) -> RunOutcome:
    record = RunRecord(
        run_id=plan.run_id,
        attempt_id=new_attempt_id(),
        status="failed",
        invocation_id=invocation_id,
        model=plan.source.to_dict(),
        method={
            "name": plan.method.name,
            "config": config_to_dict(plan.method.config),
            "ignored_parameters": plan.ignored_params,
        },
        eval={"suite": plan.suite, "evaluators": plan.identity["eval"]["evaluators"]},
        config=plan.cfg,
        environment=environment(),
        data=plan.data,
    )
    watch, stage, started = Stopwatch(), "start", time.perf_counter()
    tracker_ok = _start_tracker(tracker, plan, record)
    try:
        seed_everything(plan.eval_ctx.seed)
        stage = "load"
        with watch.time("load_s"):
            bundle = plan.loader.load(plan.source, plan.loader_config, plan.load_ctx)
        calib = None
        if plan.calib_config is not None:
            stage = "calibration data"
            with watch.time("calibration_data_s"):
                calib = build_calibration_set(plan.calib_config, plan.calib_ref, bundle.tokenizer)
                calib.cache_dir = plan.load_ctx.cache_dir
        stage = "compress"
        record.compression = compress(plan.method, bundle, calib).to_dict()
        watch.durations["compress_s"] = record.compression["wall_time_s"]
        if plan.cfg.get("save_dir"):
            stage = "save"
            record.artifacts["saved_model"] = str(_save_model(plan, bundle, record))

        stage = "evaluate"
        protocol: dict = {"dtype": plan.source.dtype, "device": plan.eval_ctx.device, "threads": torch.get_num_threads()}
        for name, evaluator in plan.evaluators:
            try:
                seed_everything(plan.eval_ctx.seed)
                with watch.time(f"eval_{name}_s"):
                    result = evaluator(bundle, plan.eval_ctx)
            except Exception as exc:  # one evaluator failing must not stop the others
                log.exception("evaluator %s failed", name)
                record.evaluator_errors.append({"evaluator": name, **_error(exc)})
                continue
            for metric in result.metrics:
                metric.evaluator = name
                record.metrics.append(metric.to_dict())
            protocol[name] = {"version": evaluator.version, **result.protocol}
            if result.details:
                record.artifacts[name] = result.details
        record.protocol = protocol
        record.protocol_fingerprint = protocol_fingerprint(protocol)
        if record.evaluator_errors:
            failed = ", ".join(e["evaluator"] for e in record.evaluator_errors)
            record.error = {"stage": "evaluate", "type": "EvaluatorError", "message": f"evaluator(s) failed: {failed}"}
        else:
            record.status = "ok"
    except BaseException as exc:
        record.error = {"stage": stage, **_error(exc)}
        if not isinstance(exc, Exception):  # KeyboardInterrupt/SystemExit: record, then re-raise
            record.error["message"] = record.error["message"] or type(exc).__name__
            raise
        log.error("run %s failed during %s: %s: %s", plan.run_id, stage, type(exc).__name__, exc)
    finally:
        watch.durations["total_s"] = time.perf_counter() - started
        record.timings = {k: round(v, 3) for k, v in watch.durations.items()}
        data = record.to_dict()
        path = store.write(data)
        if tracker_ok:
            _finish_tracker(tracker, data)
    return RunOutcome(status=record.status, run_id=plan.run_id, record=data, path=path)


def _save_model(plan: RunPlan, bundle, record: RunRecord) -> Path:
    """The compressed model as safetensors + JSON (``save_dir``/<run_id>/; see kernels.serialization)."""
    from slimbench.kernels.serialization import save_compressed

    meta = {"run_id": plan.run_id, "model": plan.source.to_dict(), "method": record.method}
    return save_compressed(bundle.model, Path(plan.cfg["save_dir"]) / plan.run_id, meta=meta)


def compress(method, bundle, calib: CalibrationSet | None) -> CompressionReport:
    """Apply a method and report what it did, measured from the weights before and after."""
    before = footprint(bundle.model, bundle.adapter)
    with measure_peak_rss() as peak:
        start = time.perf_counter()
        result = method.apply(bundle, calib)
        wall = time.perf_counter() - start
    after = footprint(bundle.model, bundle.adapter)
    notes = list(result.notes)
    if result.execution_path in NO_SPEEDUP_PATHS and method.name != "dense":
        notes.append(f"execution path {result.execution_path}: no speedup expected")
    if calib is not None and calib.cache_reads:
        notes.append(f"{CALIB_CACHE_NOTE} ({', '.join(sorted(set(calib.cache_reads)))}): "
                     "wall time and peak RSS exclude the calibration pass that computed them")
    return CompressionReport(
        method=method.name,
        execution_path=result.execution_path,
        speedup_expected=result.execution_path not in NO_SPEEDUP_PATHS,
        simulated=result.execution_path == "simulated",
        params_before=before.params,
        params_after=after.params,
        bytes_before=before.bytes,
        bytes_after=after.bytes,
        linear_params_before=before.linear_params,
        linear_params_after=after.linear_params,
        bits_per_weight_before=before.bits_per_weight,
        bits_per_weight_after=after.bits_per_weight,
        sparsity=after.sparsity,
        wall_time_s=wall,
        peak_rss_bytes=peak.peak_rss_bytes,
        rss_before_bytes=peak.start_rss_bytes,
        peak_rss_method=peak.method,
        calibration=None if calib is None else calib.fingerprint(),
        details=result.details,
        notes=notes,
    )


def _error(exc: BaseException) -> dict:
    return {
        "type": type(exc).__name__,
        "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
    }


def _start_tracker(tracker: Tracker, plan: RunPlan, record: RunRecord) -> bool:
    try:
        tracker.start(
            run_name=f"{plan.source.name}/{plan.method.name}/{plan.run_id[:8]}",
            run_key=f"{plan.run_id}-{record.attempt_id[-8:]}",
            config={"run_id": plan.run_id, **plan.identity},
            tags=[plan.source.name, plan.method.name, plan.suite],
            group=record.invocation_id,
        )
        return True
    except Exception as exc:  # the tracker is a sink: never lose a run because of it
        log.warning("tracker failed to start (%s: %s); continuing without it", type(exc).__name__, exc)
        return False


def _finish_tracker(tracker: Tracker, record: dict) -> None:
    try:
        tracker.log_record(record)
    except Exception as exc:
        log.warning("tracker failed to log the record (%s: %s)", type(exc).__name__, exc)
    finally:
        try:
            tracker.finish(ok=record["status"] == "ok")
        except Exception as exc:
            log.warning("tracker failed to finish (%s: %s)", type(exc).__name__, exc)


# -- entry point used by the CLI and the tests ------------------------------------------------
def run_experiment(cfg: Any, lenient_method_params: bool = False, invocation_id: str | None = None) -> RunOutcome:
    """Validate, then run unless the store already holds a successful record (``force``)."""
    cfg = to_plain(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    plan = plan_run(cfg, lenient_method_params=lenient_method_params)
    store = ResultStore(cfg["paths"]["results_dir"])
    with store.lock(plan.run_id) as acquired:
        if not acquired:
            return RunOutcome("skipped", plan.run_id, reason="another process is running this run_id")
        done = None if cfg.get("force") else store.completed(plan.run_id)
        if done is not None:
            reason = "a successful record with this run_id exists (force=true re-runs)"
            return RunOutcome("skipped", plan.run_id, done, path=store.path_of(done), reason=reason)
        return execute(plan, store, plan.tracker, invocation_id=invocation_id)
