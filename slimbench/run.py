"""One run: validate -> (skip?) -> load -> calibrate -> compress (each stage) -> evaluate -> record.

Everything that can be checked is checked in ``plan_run`` before any weights load: the
method or pipeline and its parameters (and whether each stage can follow the previous ones),
the model's identity and its adapter, method/evaluator support for the model kind, the data the
run will read. A ``ConfigError`` there is bad input and is reported in one line. Past that point
every failure is recorded: the record is written in a ``finally`` block with status ``failed``,
the stage, and the error; the tracker is closed.

A run applies one method or a pipeline of stages (``method.0``, ``method.1``, ... in the config:
``slimbench pipeline='[wanda,gptq]'`` or a preset in ``conf/pipeline/``). Stages share one
calibration set; consecutive stages that work block by block in the calibration engine run in
one engine pass (``fuse_stages``). The record lists every stage with its own report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from slimbench._system import Stopwatch, measure_peak_gpu, measure_peak_rss
from slimbench.configs import (
    RunSettings, build_dataclass, check_dir_path, config_to_dict, field_names, run_settings, to_plain, unknown_keys,
)
from slimbench.data.corpora import CorpusRef, check_data_dir, check_holds, resolve_corpus
from slimbench.data.sampler import CalibConfig, CalibrationSet, TrajectoryCalibConfig, build_calibration_set, build_trajectory_set
from slimbench.errors import ConfigError, RunInterrupted
from slimbench.evaluation import EVALUATORS, EvalContext
from slimbench.evaluation.size import footprint, module_params
from slimbench.methods import METHODS
from slimbench.methods.base import NO_SPEEDUP_PATHS, Method, check_stage_order, forms_before, run_sequential
from slimbench.models.adapters import adapter_for
from slimbench.models.bundle import ModelBundle, ModelShape, ModelSource
from slimbench.models.io import MODEL_IO
from slimbench.models.loaders import LoadContext, Loader, resolve_model
from slimbench.moe.metrics import routing_metrics
from slimbench.records import (
    CompressionReport, LayerReport, RunRecord, StageReport, environment, evaluator_fingerprint, finite, new_attempt_id, stable_hash,
)
from slimbench.store import ResultStore, record_json, write_atomic, write_fallback
from slimbench.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One validated method of a run (a pipeline has several)."""

    method: Method
    params: dict  # the parameters given (validated)
    ignored: dict  # grid parameters this method lacks (multirun only)

    @property
    def name(self) -> str:
        return self.method.name


@dataclass
class RunPlan:
    """A validated run: everything needed to execute it, resolved without loading weights."""

    cfg: dict
    settings: RunSettings
    source: ModelSource
    loader: Loader
    loader_config: Any
    stages: list[Stage]
    fuse_stages: bool
    evaluators: list[tuple[str, Any]]
    suite: str
    calib_config: CalibConfig | TrajectoryCalibConfig | None
    calib_ref: CorpusRef | None
    data: dict
    eval_ctx: EvalContext
    load_ctx: LoadContext
    run_id: str
    tracker: Tracker
    identity: dict = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return "+".join(s.name for s in self.stages)


@dataclass
class RunOutcome:
    status: str  # ok | failed | skipped
    run_id: str
    record: RunRecord | None = None
    path: Path | None = None  # the record (or, when the store could not take it, the fallback file)
    reason: str = ""
    write_error: str | None = None  # set when the store could not take the record
    bundle: ModelBundle | None = None  # the compressed model (runs that executed and loaded it)


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


def stage_nodes(method_node: Any) -> list[dict]:
    """The method node as a list of stage nodes: one method (``name: ...``) or stages keyed 0, 1, ..."""
    node = dict(method_node or {})
    if "name" in node or not node:
        return [node]
    if not all(str(k).isdigit() for k in node):
        raise ConfigError("method: expected one method (method=<name>) or pipeline stages method.0, method.1, ... "
                          f"(pipeline='[a,b]'); got keys {sorted(map(str, node))}")
    keys = sorted(node, key=int)
    if [int(k) for k in keys] != list(range(len(keys))):
        raise ConfigError(f"pipeline stages must be numbered 0..{len(keys) - 1}, got {[int(k) for k in keys]}")
    return [dict(node[k] or {}) for k in keys]


def _stage(node: dict, index: int | None, lenient: bool) -> Stage:
    name = node.pop("name", None) or "?"
    where = f"method {name}" if index is None else f"pipeline stage {index} ({name})"
    try:
        cls = METHODS.get(name)
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc}" if index is not None else str(exc)) from None
    accepted, ignored = _method_params(cls, node, lenient)
    return Stage(cls(build_dataclass(cls.Config, accepted, owner=where)), accepted, ignored)


def _calibration(cfg: dict, io, data_dir, shape: ModelShape, needed: bool) -> tuple[CalibConfig | TrajectoryCalibConfig, CorpusRef | None, dict]:
    """The calibration config for the model kind, its corpus (text) and its data fingerprints.
    The node is validated even when no stage calibrates (a typo is a typo); its data only when one does."""
    node = dict(cfg.get("calib") or {})
    if io.kind == "diffusion":
        if node.get("dataset", "trajectory") != "trajectory":
            raise ConfigError(f"calib.dataset {node.get('dataset')!r} is text; diffusion models calibrate on their own "
                              "sampling trajectories (calib=dit-trajectory)")
        return build_dataclass(TrajectoryCalibConfig, node, owner="calib", what="key"), None, {}
    if node.get("dataset") == "trajectory":
        raise ConfigError(f"calib.dataset 'trajectory' is for diffusion models; {io.kind} models calibrate on "
                          "text (calib=wikitext2)")
    config = build_dataclass(CalibConfig, node, owner="calib", what="key")
    if not needed:
        return config, None, {}
    check_context("calib.seqlen", config.seqlen, shape)
    ref = resolve_corpus(config.dataset, config.split, data_dir)
    check_holds(ref, config.seqlen + 2, "calibration windows of calib.seqlen + 2")
    return config, ref, {f"calibration:{config.dataset}/{config.split}": ref.fingerprint()}


def check_context(what: str, tokens: int, shape: ModelShape) -> None:
    """``tokens`` positions fit the model's context (when its config states one)."""
    if shape.max_positions is not None and tokens > shape.max_positions:
        raise ConfigError(f"{what} {tokens} exceeds the model's context (max_position_embeddings {shape.max_positions})")


def plan_run(cfg: dict, lenient_method_params: bool = False) -> RunPlan:
    settings = run_settings(cfg)  # the top-level keys, parsed strictly
    paths = settings.paths
    data_dir = check_data_dir(paths.data_dir)
    check_dir_path(paths.results_dir, "paths.results_dir", create=True)
    cache_dir = check_dir_path(paths.cache_dir, "paths.cache_dir", create=True)
    if settings.save_dir is not None:
        check_dir_path(settings.save_dir, "save_dir", create=False)
    load_ctx = LoadContext(cache_dir=cache_dir, device="cpu" if settings.offload else settings.device)

    # method or pipeline (cheapest checks first: a bad method parameter fails before anything else)
    nodes = stage_nodes(cfg.get("method"))
    pipeline = len(nodes) > 1
    stages = [_stage(node, i if pipeline else None, lenient_method_params) for i, node in enumerate(nodes)]
    classes = [type(s.method) for s in stages]
    check_stage_order(classes)
    for stage, forms in zip(stages, forms_before(classes)):
        stage.method = stage.method.after(forms)  # e.g. GPTQ's preserve_zeros: null = true after pruning

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
    adapter = adapter_for(source.model_type)
    for stage in stages:
        if source.kind not in stage.method.kinds:
            raise ConfigError(f"method {stage.name!r} does not support {source.kind} models (supports: {', '.join(stage.method.kinds)})")
    for ev_name, ev in evaluators:
        if source.kind not in ev.kinds:
            raise ConfigError(
                f"evaluator {ev_name!r} does not support {source.kind} models (supports: {', '.join(ev.kinds)}); "
                "choose another eval suite"
            )
    for i, stage in enumerate(stages):
        try:
            stage.method.check(adapter)
            stage.method.check_shape(source.shape)
        except ConfigError as exc:
            where = f"pipeline stage {i} ({stage.name})" if pipeline else f"method {stage.name}"
            raise ConfigError(f"{where}: {exc}") from None

    # data the run will read
    threads = settings.threads or torch.get_num_threads()
    eval_ctx = EvalContext(
        data_dir=data_dir, device=settings.device, seed=settings.seed, threads=threads, cache_dir=load_ctx.cache_dir, shape=source.shape,
        log_samples=bool((cfg.get("tracker") or {}).get("log_samples", False)),
    )
    data: dict = {}
    for _, ev in evaluators:
        data.update(ev.check(eval_ctx))
    needs_calibration = any(s.method.requires_calibration for s in stages)
    calib_config, calib_ref, calib_data = _calibration(cfg, MODEL_IO.get(adapter.io), paths.data_dir, source.shape, needs_calibration)
    data.update(calib_data)
    if not needs_calibration:
        calib_config = None

    fuse = settings.fuse_stages
    tracker = make_tracker(cfg.get("tracker") or {"name": "none"})
    identity = {
        "model": source.to_dict(),
        "method": _method_identity(stages, fuse) if pipeline else {"name": stages[0].name, "config": config_to_dict(stages[0].method.config)},
        "calibration": None if calib_config is None else config_to_dict(calib_config),
        "eval": {"suite": suite, "evaluators": {n: {"version": e.version, "config": config_to_dict(e.config)} for n, e in evaluators}},
        "data": data,
        "seed": eval_ctx.seed,
        "device": eval_ctx.device,
        "threads": threads,
    }
    return RunPlan(
        cfg=cfg, settings=settings, source=source, loader=loader, loader_config=loader_config, stages=stages, fuse_stages=fuse,
        evaluators=evaluators, suite=suite, calib_config=calib_config, calib_ref=calib_ref, data=data, eval_ctx=eval_ctx,
        load_ctx=load_ctx, run_id=stable_hash(identity), tracker=tracker, identity=identity,
    )


def _method_identity(stages: list[Stage], fuse: bool) -> dict:
    return {"name": "+".join(s.name for s in stages), "stages": [{"name": s.name, "config": config_to_dict(s.method.config)} for s in stages],
            "fuse_stages": fuse}


# -- execution ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def build_calibration(plan: RunPlan, bundle: ModelBundle) -> CalibrationSet:
    if isinstance(plan.calib_config, TrajectoryCalibConfig):
        calib = build_trajectory_set(plan.calib_config, bundle)
    else:
        calib = build_calibration_set(plan.calib_config, plan.calib_ref, bundle.tokenizer)
    calib.cache_dir = plan.load_ctx.cache_dir
    return calib


def execute(plan: RunPlan, store: ResultStore, tracker: Tracker, invocation_id: str | None = None,
            on_start: Callable[[str, Path], None] | None = None) -> RunOutcome:
    record = RunRecord(
        run_id=plan.run_id,
        attempt_id=new_attempt_id(),
        status="failed",
        invocation_id=invocation_id,
        model=plan.source.to_dict(),
        method={
            "name": plan.method_name,
            "stages": [{"name": s.name, "config": config_to_dict(s.method.config), "ignored_parameters": s.ignored} for s in plan.stages],
            **({"fuse_stages": plan.fuse_stages} if len(plan.stages) > 1 else {}),
        },
        eval={"suite": plan.suite, "evaluators": plan.identity["eval"]["evaluators"]},
        config=plan.cfg,
        environment=environment(),
        data=plan.data,
    )
    watch, started = Stopwatch(), time.perf_counter()
    progress = _Progress(store, record)
    tracker_ok, interrupted = False, None
    bundle, samples, path = None, {}, None
    with stop_on_signals():
        try:
            progress.reached("start")
            if on_start is not None:
                on_start(plan.run_id, store.path_of(record))
            tracker_ok = _start_tracker(tracker, plan, record)
            seed_everything(plan.eval_ctx.seed)
            progress.reached("load")
            with watch.time("load_s"):
                bundle = plan.loader.load(plan.source, plan.loader_config, plan.load_ctx)
            bundle.cache_dir = plan.load_ctx.cache_dir
            if plan.settings.offload:
                bundle.compute_device = plan.settings.device
            calib = None
            if plan.calib_config is not None:
                progress.reached("calibration data")
                with watch.time("calibration_data_s"):
                    calib = build_calibration(plan, bundle)
            progress.reached("compress")
            record.compression = compress([s.method for s in plan.stages], bundle, calib, fuse=plan.fuse_stages)
            watch.durations["compress_s"] = record.compression.wall_time_s
            if plan.settings.offload:  # compressed: evaluated on the device
                with watch.time("offload_to_device_s"):
                    bundle.model.to(plan.settings.device)
                bundle.compute_device = None
                record.compression.notes.append(f"offload=true: the weights stayed in CPU memory during compression, each block "
                                                f"computed on {plan.settings.device} in turn; the compressed model was then "
                                                f"moved to {plan.settings.device} for evaluation")

            progress.reached("evaluate")
            samples = evaluate(plan, bundle, record, watch)
            if samples:
                record.artifacts["samples"] = _write_samples(store, record, samples)
            if plan.settings.save_dir:  # after evaluation: the model card holds the measured metrics
                progress.reached("save")
                with watch.time("save_s"):
                    record.artifacts["saved_model"] = _save_model(plan, bundle, record)
            if record.evaluator_errors:
                record.error = _evaluator_failure(record.evaluator_errors)
            else:
                record.status, record.error = "ok", None
        except BaseException as exc:
            record.status = "failed"
            record.error = {"stage": progress.stage, **_error(exc)}
            if isinstance(exc, RunInterrupted):
                interrupted = exc
                record.error["signal"] = exc.signal_name
                log.error("run %s interrupted by %s during %s", plan.run_id, exc.signal_name, progress.stage)
            elif not isinstance(exc, Exception):  # KeyboardInterrupt/SystemExit: record, then re-raise
                record.error["message"] = record.error["message"] or type(exc).__name__
            else:
                log.error("run %s failed during %s: %s: %s", plan.run_id, progress.stage, type(exc).__name__, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            watch.durations["total_s"] = time.perf_counter() - started
            record.timings = {k: round(v, 3) for k, v in watch.durations.items()}
            path, write_error = _write_record(store, record)
            if tracker_ok:
                _finish_tracker(tracker, record, path, samples)
            if interrupted is not None:
                interrupted.record_path = path
    return RunOutcome(status=record.status, run_id=plan.run_id, record=record, path=path, write_error=write_error, bundle=bundle)


class _Progress:
    """The stage a run has reached, kept in its attempt file as a ``failed``/``Interrupted``
    placeholder (so a run killed outright still has a record saying where it stopped); the
    finished record replaces it."""

    def __init__(self, store: ResultStore, record: RunRecord) -> None:
        self.store, self.record, self.stage, self.writable = store, record, "start", True

    def reached(self, stage: str) -> None:
        self.stage = stage
        if not self.writable:
            return
        placeholder = {**self.record.to_dict(), "status": "failed",
                       "error": {"stage": stage, "type": "Interrupted", "pid": os.getpid(), "host": socket.gethostname(),
                                 "message": f"the run did not finish: its process ended during {stage} (killed, out of memory, "
                                            "power loss?) or it is still running"}}
        try:
            self.store.write(placeholder)
        except OSError as exc:  # the final write will try again, with a fallback
            log.warning("could not write the run's placeholder record (%s: %s)", type(exc).__name__, exc)
            self.writable = False


def mark_killed(path: Path, reason: str) -> str | None:
    """A run whose process died left its placeholder record: say how it died (``reason``, e.g.
    "killed by SIGKILL (signal 9)") and where. Returns the new message (None: not a placeholder)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    error = data.get("error") or {}
    if data.get("status") != "failed" or error.get("type") != "Interrupted" or error.get("signal"):
        return None
    error["message"] = f"the run's process was {reason} during {error.get('stage', '?')}"
    error["process_exit"] = reason
    data["error"] = error
    write_atomic(path, record_json(data))
    return error["message"]


def _write_record(store: ResultStore, record: RunRecord) -> tuple[Path | None, str | None]:
    """Store the record; if the store cannot take it, the full record goes to stderr and a fallback
    file (``store.write_fallback``). Returns (where it is, the write error or None)."""
    data = record.to_dict()
    try:
        return store.write(data), None
    except OSError as exc:
        saved = write_fallback(data, exc, store.path_of(data))
        return saved, f"{type(exc).__name__}: {exc}"


def _evaluator_failure(errors: list[dict]) -> dict:
    kinds = {e["type"] for e in errors}
    reasons = "; ".join(f"{e['evaluator']}: {e['message']}" for e in errors)
    return {"stage": "evaluate", "type": kinds.pop() if len(kinds) == 1 else "EvaluatorError", "message": f"evaluator(s) failed: {reasons}"}


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
    """While a run executes, SIGTERM/SIGINT/SIGHUP raise ``RunInterrupted`` (once) so that the run
    records a failed record with the stage and the signal, and closes the tracker, before it stops.
    Only the main thread can install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if raised:  # already stopping: let the record be written
            log.warning("%s received again while recording the interruption; still stopping", signal.Signals(signum).name)
            return
        raised.append(signum)
        raise RunInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def evaluate(plan: RunPlan, bundle: ModelBundle, record: RunRecord, watch: Stopwatch) -> dict:
    """Run every evaluator (one failing does not stop the others); metrics and per-evaluator
    protocols go into the record; returns the per-document samples evaluators kept (when asked)."""
    samples, routing = {}, {}
    start = bundle.hooks.counters()
    for name, evaluator in plan.evaluators:
        try:
            seed_everything(plan.eval_ctx.seed)
            bundle.hooks.reset_state()
            before = bundle.hooks.counters()
            with watch.time(f"eval_{name}_s"), measure_peak_gpu(_model_device(bundle.model)) as gpu:
                result = evaluator(bundle, plan.eval_ctx)
            record.evaluator_peak_gpu_bytes[name] = gpu.peak_bytes
            counted, routing[name] = routing_metrics(name, before, bundle.hooks.counters())  # MoE routing hooks' counts
        except Exception as exc:  # one evaluator failing must not stop the others
            log.exception("evaluator %s failed", name)
            record.evaluator_errors.append({"evaluator": name, **_error(exc)})
            continue
        for metric in result.metrics:
            metric.evaluator = name
            record.metrics.append(metric)
        record.metrics.extend(counted)
        bad = [f"{m.name}={m.value!r}" for m in result.metrics if m.value is not None and not finite(m.value)]
        if bad:  # a NaN perplexity is a broken model or evaluation, never a result
            log.error("evaluator %s returned non-finite metrics: %s", name, ", ".join(bad))
            record.evaluator_errors.append({"evaluator": name, "type": "NonFiniteMetric",
                                            "message": f"non-finite metric(s) {', '.join(bad)}", "traceback": ""})
        fingerprint = evaluator_fingerprint(name, evaluator.version, result.protocol)
        record.protocols[name] = {"fingerprint": fingerprint, "version": evaluator.version, **result.protocol}
        if result.details:
            record.artifacts[name] = result.details
        if result.samples:
            samples[name] = result.samples
    counted, overall = routing_metrics(None, start, bundle.hooks.counters())
    if counted:
        record.metrics.extend(counted)
        record.artifacts["moe"] = {**overall, "per_evaluator": {n: r for n, r in routing.items() if r}}
    quality = {n: p["fingerprint"] for n, p in record.protocols.items() if not getattr(EVALUATORS.get(n), "machine_dependent", False)}
    record.protocol_fingerprint = stable_hash(quality) if record.protocols else None
    return samples


def _write_samples(store: ResultStore, record: RunRecord, samples: dict) -> dict:
    """Per-document samples as JSONL next to the records (``samples/<run_id>__<attempt>/<evaluator>.<task>.jsonl``)."""
    import json

    folder = store.root / "samples" / f"{record.run_id}__{record.attempt_id}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for evaluator, per_task in samples.items():
        for task, rows in per_task.items():
            path = folder / f"{evaluator}.{task}.jsonl"
            path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
            files[f"{evaluator}.{task}"] = str(path)
    return files


def _save_model(plan: RunPlan, bundle: ModelBundle, record: RunRecord) -> dict:
    """The compressed model as a Hugging Face directory ``save_dir``/<run_id>/ (see slimbench.checkpoint)."""
    from slimbench.checkpoint import save_pretrained

    return save_pretrained(bundle, Path(plan.settings.save_dir).expanduser() / plan.run_id, record=record).to_dict()


# -- compression -------------------------------------------------------------------------------
@dataclass
class _Measured:
    wall_time_s: float
    peak_rss_bytes: int | None
    rss_before_bytes: int | None
    peak_rss_method: str
    peak_gpu_bytes: int | None = None


def compress(methods: Method | list[Method], bundle: ModelBundle, calib: CalibrationSet | None, fuse: bool = True) -> CompressionReport:
    """Apply the method (or the pipeline's methods, in order) and report what they did, measured from the model before and
    after (sizes, sparsity, per-layer parameters). With ``fuse``, consecutive methods that work
    block by block (``plan()``) and agree on error propagation run in one calibration-engine
    pass; a method's ``plan()`` only builds closures (it reads no weights), so it may be made
    before the stages fused with it run."""
    methods = list(methods) if isinstance(methods, (list, tuple)) else [methods]
    before = footprint(bundle.model, bundle.adapter)
    reads_before = 0 if calib is None else len(calib.cache_reads)
    stages: list[StageReport] = []
    measured: list[_Measured] = []
    pending: list[tuple[Method, Any]] = []

    def flush() -> None:
        if pending:
            reports, m = _run_group(bundle, calib, list(pending))
            stages.extend(reports)
            measured.append(m)
            pending.clear()

    for method in methods:
        plan = method.plan(bundle, calib) if fuse else None
        if plan is not None and pending and pending[0][1].propagate_error == plan.propagate_error:
            pending.append((method, plan))
            continue
        flush()
        if plan is not None:
            pending.append((method, plan))
        else:
            reports, m = _run_group(bundle, calib, [(method, None)])
            stages.extend(reports)
            measured.append(m)
    flush()

    after = footprint(bundle.model, bundle.adapter)
    paths = [s.execution_path for s in stages]
    path = "+".join(dict.fromkeys(p for p in paths if p != "dense")) or "dense"
    notes = []
    if path != "dense" and all(p in NO_SPEEDUP_PATHS for p in paths):
        notes.append(f"execution path {path}: no speedup expected")
    hits = sorted(set(calib.cache_reads[reads_before:])) if calib is not None else []
    if hits:
        notes.append("the calibration statistics " + ", ".join(hits) + " were read from the cache: "
                     "wall time and peak RSS exclude the calibration pass that computed them")
    peaks = [m.peak_rss_bytes for m in measured if m.peak_rss_bytes is not None]
    gpu_peaks = [m.peak_gpu_bytes for m in measured if m.peak_gpu_bytes is not None]
    return CompressionReport(
        method="+".join(m.name for m in methods),
        execution_path=path,
        speedup_expected=any(p not in NO_SPEEDUP_PATHS for p in paths),
        simulated="simulated" in paths,
        baseline=path == "dense" and not any(s.hooks for s in stages),
        params_before=before.params,
        params_after=after.params,
        bytes_before=before.bytes,
        bytes_after=after.bytes,
        linear_params_before=before.linear_params,
        linear_params_after=after.linear_params,
        bits_per_weight_before=before.bits_per_weight,
        bits_per_weight_after=after.bits_per_weight,
        sparsity=after.sparsity,
        wall_time_s=sum(m.wall_time_s for m in measured),
        peak_rss_bytes=max(peaks) if peaks else None,
        rss_before_bytes=measured[0].rss_before_bytes if measured else None,
        peak_rss_method=measured[0].peak_rss_method if measured else "unavailable",
        peak_gpu_bytes=max(gpu_peaks) if gpu_peaks else None,
        calibration=None if calib is None else calib.fingerprint(),
        calibration_cache_hits=hits,
        stages=stages,
        notes=notes,
    )


def _run_group(bundle: ModelBundle, calib: CalibrationSet | None, group: list[tuple[Method, Any]]) -> tuple[list[StageReport], _Measured]:
    """Run one method, or several plans fused into one engine pass; measure them together."""
    params_before = module_params(bundle.model)
    hooks_before = set(bundle.hooks.names())
    with measure_peak_rss() as peak, measure_peak_gpu(compute_device(bundle)) as gpu:
        start = time.perf_counter()
        if group[0][1] is None:
            results = [group[0][0].apply(bundle, calib)]
        else:
            results = run_sequential(bundle, calib, [plan for _, plan in group])
        wall = time.perf_counter() - start
    hooks = [n for n in bundle.hooks.names() if n not in hooks_before]
    names = [m.name for m, _ in group]
    reports = []
    for (method, _), result in zip(group, results):
        _measure_layers(bundle.model, result.layers, params_before)
        reports.append(StageReport(
            method=method.name, config=config_to_dict(method.config), execution_path=result.execution_path,
            wall_time_s=wall, peak_rss_bytes=peak.peak_rss_bytes, peak_gpu_bytes=gpu.peak_bytes, layers=result.layers, details=result.details,
            notes=list(result.notes), hooks=hooks if len(group) == 1 else [], fused_with=[n for n in names if n != method.name],
        ))
    return reports, _Measured(wall, peak.peak_rss_bytes, peak.start_rss_bytes, peak.method, gpu.peak_bytes)


def compute_device(bundle: ModelBundle) -> torch.device | None:
    """Where a bundle's computation runs: its ``compute_device`` (offload) or its weights' device."""
    return torch.device(bundle.compute_device) if bundle.compute_device else _model_device(bundle.model)


def _model_device(model: torch.nn.Module) -> torch.device | None:
    """Where the model's weights are (GPU peak memory is measured only on CUDA)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return None if tensor is None else tensor.device


def _measure_layers(model: torch.nn.Module, layers: list[LayerReport], params_before: dict[str, int]) -> None:
    """Fill each layer report's parameters before/after and its sparsity, measured."""
    modules, params_after = dict(model.named_modules()), module_params(model)
    for layer in layers:
        layer.params_before = params_before.get(layer.name)
        module = None if layer.change == "dropped" else modules.get(layer.name)
        layer.params_after = 0 if module is None else params_after[layer.name]
        layer.sparsity = _zero_fraction(module)


def _zero_fraction(module: torch.nn.Module | None) -> float | None:
    if module is None:
        return None
    counter = getattr(module, "zero_count", None)
    if callable(counter):
        return counter() / (module.in_features * module.out_features)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return round(float((weight == 0).float().mean()), 6)
    return None


def _error(exc: BaseException) -> dict:
    return {
        "type": type(exc).__name__,
        "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
    }


def _start_tracker(tracker: Tracker, plan: RunPlan, record: RunRecord) -> bool:
    try:
        tracker.start(
            run_name=f"{plan.source.name}/{plan.method_name}/{plan.run_id[:8]}",
            run_key=f"{plan.run_id}-{record.attempt_id[-8:]}",
            config={"run_id": plan.run_id, **plan.identity},
            tags=[plan.source.name, plan.method_name, plan.suite],
            group=record.invocation_id,
        )
        return True
    except Exception as exc:  # the tracker is a sink: never lose a run because of it
        log.warning("tracker failed to start (%s: %s); continuing without it", type(exc).__name__, exc)
        return False


def _finish_tracker(tracker: Tracker, record: RunRecord, path: Path | None = None, samples: dict | None = None) -> None:
    try:
        tracker.log_record(record, path=path, samples=samples)
    except Exception as exc:
        log.warning("tracker failed to log the record (%s: %s)", type(exc).__name__, exc)
    finally:
        try:
            tracker.finish(ok=record.status == "ok")
        except Exception as exc:
            log.warning("tracker failed to finish (%s: %s)", type(exc).__name__, exc)


# -- entry point used by the CLI and the tests ------------------------------------------------
def run_experiment(cfg: Any, lenient_method_params: bool = False, invocation_id: str | None = None,
                   on_start: Callable[[str, Path], None] | None = None) -> RunOutcome:
    """Validate, then run unless the store already holds a successful record (``force``).
    ``on_start(run_id, path)`` is called once the run's placeholder record is written."""
    cfg = to_plain(cfg)
    plan = plan_run(cfg, lenient_method_params=lenient_method_params)
    if plan.settings.threads:
        torch.set_num_threads(plan.settings.threads)
    store = ResultStore(Path(plan.settings.paths.results_dir).expanduser())
    with store.lock(plan.run_id) as acquired:
        if not acquired:
            return RunOutcome("skipped", plan.run_id, reason="another process is running this run_id")
        done = None if plan.settings.force else store.completed(plan.run_id)
        if done is not None:
            reason = "a successful record with this run_id exists (force=true re-runs)"
            return RunOutcome("skipped", plan.run_id, done, path=store.path_of(done), reason=reason)
        return execute(plan, store, plan.tracker, invocation_id=invocation_id, on_start=on_start)
