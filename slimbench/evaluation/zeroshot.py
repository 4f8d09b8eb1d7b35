"""Zero-shot accuracy with lm-evaluation-harness, on the compressed model in memory.

The model is wrapped as ``lm_eval.models.huggingface.HFLM(pretrained=<nn.Module>,
tokenizer=...)`` and scored by ``lm_eval.simple_evaluate``: prompts, choices, targets,
metrics and their standard errors are lm-eval's own. With a data dir, each task is lm-eval's
built-in definition (included, not copied) with its dataset swapped for the local files
converted to the hub rows (see ``slimbench.data.zeroshot``); without one, lm-eval loads the
hub datasets itself and any lm-eval task name is accepted (e.g. ``hellaswag``).

Metrics: ``<task>.acc``, ``<task>.acc_norm`` (where the task defines it) and any other metric
the task reports (``lambada_openai.perplexity``), each with lm-eval's stderr, plus
``mean.acc``: the unweighted mean of the tasks' ``acc`` (stderr: sqrt(sum se^2) / n, tasks
independent). ``limit`` evaluates the first N documents of each task (lm-eval's ``limit``)
and is part of the protocol fingerprint, as are lm-eval's version, each task's version and
split, the converted data's sha256, few-shot count and batch size.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from slimbench.data.zeroshot import DEFAULT_TASKS, LocalTaskData, load_local_task, write_task_configs
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric
from slimbench.params import check_params, param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShotConfig:
    tasks: tuple[str, ...] = param(DEFAULT_TASKS, "lm-eval task names (offline: the tasks with local data)")
    limit: int | None = param(None, "first N documents per task (null = the full split); part of the fingerprint", ge=1, nullable=True)
    batch_size: int = param(1, "lm-eval batch size", ge=1)
    num_fewshot: int = param(0, "few-shot examples per prompt (needs training splits: the hub)", ge=0)
    bootstrap_iters: int = param(1000, "lm-eval's bootstrap for non-mean metrics (lambada perplexity stderr)", ge=1)

    def __post_init__(self) -> None:
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks or ())
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ConfigError("tasks must list at least one task")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks lists a task twice: {list(tasks)}")
        check_params(self)


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def _number(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a stderr it did not compute
        return None
    return None if math.isnan(out) else out


def metrics_from_results(out: dict, tasks: tuple[str, ...]) -> list[Metric]:
    """lm-eval's ``results`` -> one Metric per task and metric, then ``mean.acc``.

    lm-eval keys are ``"<metric>,<filter>"`` with ``"<metric>_stderr,<filter>"`` beside them;
    the filter is omitted from the name when it is lm-eval's default ``none``."""
    metrics: list[Metric] = []
    accs: list[tuple[float, float | None]] = []
    for task in tasks:
        res, better = out["results"][task], out.get("higher_is_better", {}).get(task, {})
        for key, value in res.items():
            if "," not in key or key.split(",")[0].endswith("_stderr"):
                continue
            name, filt = key.split(",", 1)
            stderr = _number(res.get(f"{name}_stderr,{filt}"))
            label = name if filt == "none" else f"{name}[{filt}]"
            unit = "fraction" if name.startswith("acc") else ""
            metrics.append(Metric(f"{task}.{label}", _number(value), stderr, better.get(name), unit))
            if label == "acc":
                accs.append((float(value), stderr))
    if len(accs) != len(tasks):
        missing = [t for t in tasks if f"{t}.acc" not in {m.name for m in metrics}]
        raise RuntimeError(f"lm-eval reported no acc for {missing}")
    mean = sum(a for a, _ in accs) / len(accs)
    ses = [s for _, s in accs]
    se = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
    metrics.append(Metric("mean.acc", mean, se, True, "fraction"))
    return metrics


@contextmanager
def weights_unchanged(model: torch.nn.Module, what: str):
    """Fail if ``what`` replaced any tensor of the model (HFLM calls ``tie_weights()``)."""
    before = {k: (t.data_ptr(), tuple(t.shape)) for k, t in model.state_dict(keep_vars=True).items()}
    yield
    after = {k: (t.data_ptr(), tuple(t.shape)) for k, t in model.state_dict(keep_vars=True).items()}
    if before != after:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise RuntimeError(f"{what} changed the model's tensors ({', '.join(changed[:5])}); refusing to score another model")


@EVALUATORS.register("zeroshot")
class ZeroShot:
    name = "zeroshot"
    version = "1"
    Config = ZeroShotConfig
    kinds = ("causal_lm",)

    def __init__(self, config: ZeroShotConfig) -> None:
        self.config = config
        self._local: list[LocalTaskData] | None = None
        self._task_manager = None

    # -- before any weights load ---------------------------------------------------------------
    def check(self, ctx: EvalContext) -> dict:
        cfg = self.config
        if ctx.data_dir is None:
            return self._check_hub()
        if cfg.num_fewshot > 0:
            raise ConfigError(
                "zeroshot: num_fewshot > 0 needs the tasks' training splits, which are not in the data dir; "
                "use num_fewshot=0 or paths.data_dir=null (hub)"
            )
        self._local = [load_local_task(name, ctx.data_dir) for name in cfg.tasks]
        return {f"zeroshot/{t.name}": t.fingerprint() for t in self._local}

    def _check_hub(self) -> dict:
        from lm_eval.tasks import TaskManager

        self._task_manager = TaskManager()
        known = set(self._task_manager.all_subtasks)
        for task in self.config.tasks:
            if task not in known:
                close = difflib.get_close_matches(task, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"zeroshot: {task!r} is not an lm-eval task (lm-eval {lm_eval_version()}){hint}")
        return {f"zeroshot/{t}": {"task": t, "source": "hub"} for t in self.config.tasks}

    # -- evaluation ----------------------------------------------------------------------------
    def _tasks(self, ctx: EvalContext):
        from lm_eval.tasks import TaskManager

        if self._local is None:
            if self._task_manager is None:
                self.check(ctx)
            return self._task_manager
        cache = ctx.cache_dir if ctx.cache_dir is not None else _default_cache()
        task_dir = write_task_configs(self._local, cache)
        log.info("zeroshot: lm-eval task configs over local data in %s", task_dir)
        return TaskManager(include_path=str(task_dir), include_defaults=False)

    def __call__(self, bundle, ctx: EvalContext) -> EvalResult:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        cfg = self.config
        task_manager = self._tasks(ctx)
        with weights_unchanged(bundle.model, "lm-eval's HFLM wrapper"):
            lm = HFLM(pretrained=bundle.model, tokenizer=copy.deepcopy(bundle.tokenizer), batch_size=cfg.batch_size)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # lm-eval print()s progress notes: stdout holds only slimbench's tables
            out = simple_evaluate(
                model=lm,
                tasks=list(cfg.tasks),
                task_manager=task_manager,
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                bootstrap_iters=cfg.bootstrap_iters,
                log_samples=ctx.log_samples,
            )
        elapsed = time.perf_counter() - start
        metrics = metrics_from_results(out, cfg.tasks)
        samples = {task: [_plain_sample(s) for s in rows] for task, rows in (out.get("samples") or {}).items()}
        return EvalResult(metrics, self._protocol(out, lm), details=self._details(out, elapsed), samples=samples)

    def _protocol(self, out: dict, lm) -> dict:
        cfg = self.config
        local = {t.name: t.fingerprint() for t in self._local or []}
        tasks = {}
        for task in cfg.tasks:
            n = out.get("n-samples", {}).get(task, {})
            tasks[task] = {
                "version": out.get("versions", {}).get(task),
                "docs_evaluated": n.get("effective"),
                "docs_in_split": n.get("original"),
                **({k: local[task][k] for k in ("source", "split", "converted_sha256")} if task in local else {"source": "hub"}),
            }
        return {
            "harness": "lm-evaluation-harness simple_evaluate, HFLM on the in-memory model",
            "lm_eval_version": lm_eval_version(),
            "tasks": tasks,
            "num_fewshot": cfg.num_fewshot,
            "limit": cfg.limit,
            "batch_size": cfg.batch_size,
            "bootstrap_iters": cfg.bootstrap_iters,
            "max_length": lm.max_length,
            "mean": "unweighted mean of the tasks' acc",
        }

    @staticmethod
    def _details(out: dict, elapsed: float) -> dict:
        return {
            "wall_time_s": elapsed,
            "lm_eval_results": out.get("results", {}),
            "lm_eval_config": {k: out.get("config", {}).get(k) for k in ("batch_size", "limit", "random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
        }


def _plain_sample(sample: dict) -> dict:
    """One lm-eval sample (document, target, responses, per-document metrics) as plain JSON values."""
    import json

    return json.loads(json.dumps(sample, default=str))


def _default_cache() -> Path:
    return Path(os.environ.get("SLIMBENCH_CACHE_DIR", "~/.cache/slimbench")).expanduser()
