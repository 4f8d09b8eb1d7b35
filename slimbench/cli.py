"""The ``slimbench`` command.

    slimbench [overrides]            one run (Hydra), prints its result table
    slimbench -m [overrides]         a sweep (Hydra multirun), prints one row per job
    slimbench leaderboard [options]  tables (Markdown, CSV, HTML, JSON) and Pareto plots from the results store
    slimbench claims [options]       papers' claims (results/claims/*.yaml) checked against the store

Before Hydra starts, the overrides are checked: an unknown config-group option
(``method=nope``) is reported in one line with the available choices. Overrides of keys
inside the validated nodes (``method.*``, ``model.*``, ``eval.*``, ``calib.*``,
``tracker.*``) are passed to Hydra as ``++key=value`` so that slimbench's own validation
reports a misspelt parameter with a suggestion, and so that a grid such as
``method=dense,magnitude method.sparsity=0.3,0.5`` composes (dense ignores ``sparsity``,
and the record says so). ``hydra/launcher=`` accepts every launcher on Hydra's own search path
(installed plugins: joblib, submitit_local, submitit_slurm, ray), and ``seeds=[0,1,2]`` becomes
one job per seed (``seed=0,1,2 ++calib.seed=${seed}``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "method", "eval", "calib", "tracker", "experiment", "pipeline", "hydra/launcher", "hydra/sweeper")
VALIDATED_NODES = ("method.", "model.", "eval.", "calib.", "tracker.")
PIPELINE_PLACEHOLDER = "stages"  # conf/method/stages.yaml: an empty node the stage presets fill
JOURNAL_ENV = "SLIMBENCH_JOURNAL"
INVOCATION_ENV = "SLIMBENCH_INVOCATION"

log = logging.getLogger("slimbench")


def _options(group: str) -> list[str]:
    if group.startswith("hydra/"):
        return hydra_group_options(group)
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != PIPELINE_PLACEHOLDER) if folder.is_dir() else []


def hydra_group_options(group: str) -> list[str]:
    """The options of a Hydra group (``hydra/launcher``, ``hydra/sweeper``) on Hydra's own config
    search path: its built-ins, every installed plugin (basic, joblib, submitit_local,
    submitit_slurm, ray, ...) and slimbench's conf/."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the plugins, which register their configs
    paths = create_config_search_path(str(CONF_DIR))
    return sorted(ConfigRepository(config_search_path=paths).get_group_options(group, ObjectType.CONFIG))


def _check_choice(group: str, choice: str) -> None:
    """An unknown config-group option gets one line with the choices and the closest one."""
    from slimbench.errors import ConfigError

    options = _options(group)
    choice = choice.strip()
    if choice and choice not in options and not any(ch in choice for ch in "*?()[]{}"):
        close = difflib.get_close_matches(choice, options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {group.split('/')[-1]} {choice!r} (available: {', '.join(options)}){hint}")


def pipeline_overrides(value: str, check: bool = True) -> list[str]:
    """``pipeline=[wanda,gptq]`` -> the Hydra overrides that put each method preset at ``method.<i>``."""
    from slimbench.errors import ConfigError

    names = [n.strip() for n in value.strip().strip("[]").split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigError(f"pipeline={value!r}: a pipeline needs at least two stages, e.g. pipeline='[wanda,gptq]' (one method: method=<name>)")
    for name in names if check else ():
        _check_choice("method", name)
    return [f"method={PIPELINE_PLACEHOLDER}", *[f"+method@method.{i}={name}" for i, name in enumerate(names)]]


def seeds_overrides(value: str, multirun: bool) -> list[str]:
    """``seeds=[0,1,2]`` -> one job per seed: the global seed (sampling, anything seeded) and the
    calibration draw follow it (``seed=0,1,2 ++calib.seed=${seed}``)."""
    from slimbench.errors import ConfigError

    items = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    if not items or not all(v.lstrip("-").isdigit() for v in items):
        raise ConfigError(f"seeds={value!r}: expected a list of integers, e.g. seeds=[0,1,2]")
    if len(items) > 1 and not multirun:
        raise ConfigError(f"seeds={value!r} runs one job per seed: add -m (a multirun)")
    return [f"seed={','.join(items)}", "++calib.seed=${seed}"]


def preflight(argv: list[str]) -> list[str]:
    """Check config-group choices, expand ad-hoc pipelines and rewrite validated-node overrides;
    raises ConfigError."""
    custom_search_path = any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in argv)
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "seeds":
            out += seeds_overrides(value, multirun=any(a in ("-m", "--multirun") for a in argv))
            continue
        if eq and key == "pipeline" and value.strip().startswith("["):
            out += pipeline_overrides(value, check=not custom_search_path)
            continue
        if eq and key in GROUPS and not custom_search_path:
            for choice in value.split(","):
                _check_choice(key, choice)
        if eq and key.startswith(VALIDATED_NODES):
            arg = "++" + arg
        out.append(arg)
    return out


def _append_journal(entry: dict) -> None:
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    line = json.dumps(entry, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _task(cfg) -> None:
    """Hydra task function: one job of a run or a sweep. Never raises for a bad run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from slimbench.errors import ConfigError
    from slimbench.run import run_experiment

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    entry = {"job": hc.job.get("num", 0) if multirun else 0, "overrides": overrides}
    if cfg.get("threads") is None and multirun:
        n_jobs = hc.launcher.get("n_jobs") if hc.launcher else None
        cpus = hc.launcher.get("cpus_per_task") if hc.launcher else None
        if cpus:  # submitit (SLURM, local): the job's own CPUs
            cfg.threads = int(cpus)
        elif n_jobs and int(n_jobs) > 1:
            from slimbench._system import cpu_count

            cfg.threads = max(1, cpu_count() // int(n_jobs))
    try:
        outcome = run_experiment(cfg, lenient_method_params=multirun, invocation_id=os.environ.get(INVOCATION_ENV))
        entry.update(status=outcome.status, run_id=outcome.run_id, path=str(outcome.path or ""), reason=outcome.reason)
        if outcome.record and outcome.status == "failed":
            entry["error"] = (outcome.record.error or {}).get("message")
        if outcome.status == "skipped":
            log.info("skipped %s: %s", outcome.run_id, outcome.reason)
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr, flush=True)
        entry.update(status="invalid", error=str(exc))
    except Exception as exc:  # a bug, not a bad run: keep the sweep going, show the traceback
        log.exception("run crashed before it could be recorded")
        entry.update(status="crashed", error=f"{type(exc).__name__}: {exc}")
    _append_journal(entry)


def _hydra_main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)()


def _summarize(entries: list[dict], multirun: bool) -> int:
    from slimbench.leaderboard.tables import fmt, markdown_table, record_table
    from slimbench.records import RunRecord

    if not entries:
        return 1
    if not multirun:
        entry = entries[0]
        if entry["status"] in ("invalid", "crashed"):
            return 2 if entry["status"] == "invalid" else 1
        record = RunRecord.from_dict(json.loads(Path(entry["path"]).read_text())) if entry.get("path") else None
        if record is None and entry["status"] == "skipped":
            print(f"\nskipped {entry['run_id']}: {entry.get('reason', '')}")
            return 0
        status = record.status
        head = f"{record.model['name']} · {record.method_name} · run {record.run_id} · {status}"
        if entry["status"] == "skipped":
            head += " (from the store; force=true re-runs)"
        print(f"\n### {head}\n\n{record_table(record)}")
        if record.error:
            print(f"\nerror ({record.error['stage']}): {record.error['type']}: {record.error['message']}")
        print(f"\nrecord: {entry.get('path') or '(store)'}")
        return 0 if status == "ok" else 1

    rows = []
    for e in sorted(entries, key=lambda e: e.get("job", 0)):
        metrics: dict = {}
        path = e.get("path")
        if path and Path(path).is_file():
            rec = RunRecord.from_dict(json.loads(Path(path).read_text()))
            metrics = {m.key: m.value for m in rec.metrics}
        rows.append(
            [
                str(e.get("job", "")),
                " ".join(e.get("overrides", [])),
                e["status"],
                (e.get("run_id") or "-")[:10],
                fmt(metrics.get("perplexity.perplexity"), "{:.3f}"),
                fmt(metrics.get("latency.decode_tokens_per_s"), "{:.1f}"),
                (e.get("error") or e.get("reason") or "")[:70],
            ]
        )
    print("\n### sweep\n\n" + markdown_table(["job", "overrides", "status", "run_id", "ppl", "decode tok/s", "note"], rows))
    statuses = {e["status"] for e in entries}
    return 2 if "invalid" in statuses else 1 if statuses & {"failed", "crashed"} else 0


def leaderboard_main(argv: list[str]) -> int:
    from slimbench.leaderboard.report import main as leaderboard

    return leaderboard(argv, preflight=preflight)


def claims_main(argv: list[str]) -> int:
    from slimbench.claims import main as claims

    return claims(argv)


def _journal_dir(argv: list[str], informational: bool) -> str | None:
    """Where jobs report back: under the results dir, which jobs on other machines (SLURM) share
    with this one; the system temp dir for --cfg/--help."""
    if informational:
        return None
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.results_dir=")]
    folder = Path(given[-1] if given else os.environ.get("SLIMBENCH_RESULTS_DIR", "results/runs")) / "journal"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "leaderboard":
        return leaderboard_main(argv[1:])
    if argv and argv[0] == "claims":
        return claims_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    from slimbench.errors import ConfigError

    try:
        argv = preflight(argv)
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr)
        return 2
    multirun = any(a in ("-m", "--multirun") for a in argv)
    informational = any(a in ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info", "-i") or a.startswith("--cfg") for a in argv)
    fd, journal = tempfile.mkstemp(prefix="slimbench-journal-", suffix=".jsonl", dir=_journal_dir(argv, informational))
    os.close(fd)
    os.environ[JOURNAL_ENV] = journal
    os.environ.setdefault(INVOCATION_ENV, uuid.uuid4().hex[:12])
    saved_argv, sys.argv = sys.argv, [sys.argv[0] or "slimbench", *argv]
    code = 0
    try:
        _hydra_main()
    except SystemExit as exc:  # Hydra exits on composition errors after printing them
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        entries = [json.loads(line) for line in Path(journal).read_text().splitlines() if line.strip()]
        os.unlink(journal)
    if informational:
        return code
    return code or _summarize(entries, multirun)


if __name__ == "__main__":
    sys.exit(main())
