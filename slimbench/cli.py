"""The ``slimbench`` command: a thin layer over the Python API (``slimbench.api``) and Hydra.

    slimbench [overrides]            one run (Hydra), prints its result table
    slimbench -m [overrides]         a sweep (Hydra multirun), prints one row per job
    slimbench leaderboard [options]  tables (Markdown, CSV, HTML, JSON) and Pareto plots from the results store
    slimbench methods [name]         the methods (or one method's parameters); also evaluators, models
    slimbench claims [options]       papers' claims (results/claims/*.yaml) checked against the store
    slimbench --help                 what the command does

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
import contextlib
import difflib
import json
import logging
import os
import sys
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path

from slimbench.plugins import CONF_DIR, conf_roots  # light: no torch, no Hydra

HELP = """usage: slimbench [run] [-m] [key=value ...]
       slimbench leaderboard [--results-dir DIR] [--model M] [--suite S] [--methods a,b] [--markdown FILE]
       slimbench claims [--results-dir DIR] [--claims FILE ...]
       slimbench methods [NAME] | evaluators [NAME] | models [NAME]   [--json]

Benchmark transformer compression: Hydra composes model x method x evaluation; every run writes
one JSON record (results dir: paths.results_dir or SLIMBENCH_RESULTS_DIR) and prints its table.

subcommands:
  run (default)   one run; with -m a sweep over comma-separated values (one record per job)
  leaderboard     tables (Markdown, CSV, HTML, JSON) and Pareto plots from the results store,
                  never mixing protocols
  claims          papers' claims (results/claims/*.yaml) checked against measured records
  methods         every method: family, calibration, execution path, summary and citation;
                  `slimbench methods wanda`: its parameters with types, defaults, valid values
  evaluators      every evaluator (perplexity, zeroshot, latency, size, ...) and its parameters
  models          every model preset and its loader's parameters

config groups (choose with group=option; see `slimbench --cfg job` for the composed config):
{groups}

examples:
  slimbench method=wanda method.sparsity=0.5
  slimbench method=gptq method.group_size=64 eval=ppl save_dir=models
  slimbench pipeline='[wanda,gptq]' method.0.pattern=2:4
  slimbench -m method=dense,magnitude method.sparsity=0.3,0.5
  slimbench model=saved model.path=models/<run_id> eval=zeroshot-quick

Hydra's own flags: --cfg job|hydra|all, --info, --hydra-help, -m/--multirun.
Python: import slimbench; slimbench.experiment(...), slimbench.compress(...), slimbench.results(...),
slimbench.load_pretrained(dir). README.md has the details."""
GROUPS = ("model", "method", "eval", "calib", "tracker", "experiment", "pipeline", "hydra/launcher", "hydra/sweeper")
VALIDATED_NODES = ("method.", "model.", "eval.", "calib.", "tracker.")
PIPELINE_PLACEHOLDER = "stages"  # conf/method/stages.yaml: an empty node the stage presets fill
JOURNAL_ENV = "SLIMBENCH_JOURNAL"
EXIT_UNSAVED = 3  # the run finished but the results store could not take its record (it is in a fallback file)
INVOCATION_ENV = "SLIMBENCH_INVOCATION"

log = logging.getLogger("slimbench")


def _options(group: str) -> list[str]:
    """The presets of a config group: slimbench's and every installed plugin's (``slimbench.plugins``)."""
    if group.startswith("hydra/"):
        return hydra_group_options(group)
    names = {p.stem for root in conf_roots() for p in (root / group).glob("*.yaml")}
    return sorted(names - {PIPELINE_PLACEHOLDER})


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
    if group == "method" and choice == PIPELINE_PLACEHOLDER:  # method=stages +method@method.0=...: a pipeline spelled out
        return
    if choice and choice not in options and not any(ch in choice for ch in "*?()[]{}"):
        close = difflib.get_close_matches(choice, options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {group.split('/')[-1]} {choice!r} (available: {', '.join(options)}){hint}")


@lru_cache(maxsize=1)
def _config_keys() -> dict[str, tuple[str, ...] | None]:
    """conf/config.yaml's top-level keys (for a mapping such as ``paths``: its keys) and the groups."""
    import yaml

    data = yaml.safe_load((CONF_DIR / "config.yaml").read_text()) or {}
    keys = {k: (tuple(sorted(v)) if isinstance(v, dict) else None) for k, v in data.items() if k not in ("defaults", "hydra")}
    for group in GROUPS:
        keys.setdefault(group.split("/")[0], None)
    return keys


def _check_key(key: str) -> None:
    """A plain ``key=value`` must override an existing key: Hydra's own error for ``sed=1`` is a
    multi-line "Key 'sed' is not in struct" without a suggestion. (``+key=value`` adds a key;
    the run's validation then reports it if slimbench does not know it.)"""
    from slimbench.configs import unknown_key_message
    from slimbench.errors import ConfigError

    known = _config_keys()
    root, _, rest = key.partition(".")
    if root not in known:
        raise ConfigError(unknown_key_message(root, sorted(known), what="key"))
    children = known[root]
    if rest and children is not None and rest.split(".")[0] not in children:
        raise ConfigError(unknown_key_message(f"{root}.{rest}", [f"{root}.{c}" for c in children], what="key"))


DIR_KEYS = ("paths.results_dir", "paths.cache_dir", "save_dir")


def _check_dirs(argv: list[str]) -> None:
    """Directory settings with a regular file in the way fail here, in one line: Hydra creates its
    run directory under paths.results_dir before slimbench's validation runs."""
    from slimbench.configs import check_dir_path

    given = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        given[key.lstrip("+~")] = value if eq else None
    if "paths.results_dir" not in given and os.environ.get("SLIMBENCH_RESULTS_DIR"):
        given["paths.results_dir"] = os.environ["SLIMBENCH_RESULTS_DIR"]
    for key in DIR_KEYS:
        value = given.get(key)
        if value and "${" not in value and "," not in value and value != "null":
            check_dir_path(value, key, create=False)


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
    """Check config-group choices, top-level keys and directory settings, expand ad-hoc pipelines
    and rewrite validated-node overrides; raises ConfigError."""
    custom_search_path = any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in argv)
    _check_dirs(argv)
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
        elif eq and not key.startswith(("+", "~", "hydra", "-")) and "@" not in key and "/" not in key \
                and not key.startswith(VALIDATED_NODES):
            _check_key(key)
        if eq and key.startswith(VALIDATED_NODES):
            arg = "++" + arg
        out.append(arg)
    return out


def append_journal(entry: dict) -> None:
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
    """Hydra task function: one job of a run or a sweep. Never raises for a bad run; a signal
    (``RunInterrupted``) is journaled, after the run recorded it, and passed on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from slimbench.errors import ConfigError, RunInterrupted
    from slimbench.run import run_experiment

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]  # as typed: ${...} unresolved
    entry = {"job": hc.job.get("num", 0) if multirun else 0, "overrides": overrides}
    try:
        if multirun and OmegaConf.select(cfg, "threads", throw_on_resolution_failure=False) is None:
            n_jobs = hc.launcher.get("n_jobs") if hc.launcher else None
            cpus = hc.launcher.get("cpus_per_task") if hc.launcher else None
            if cpus:  # submitit (SLURM, local): the job's own CPUs
                cfg.threads = int(cpus)
            elif n_jobs and int(n_jobs) > 1:
                from slimbench._system import cpu_count

                cfg.threads = max(1, cpu_count() // int(n_jobs))

        def started(run_id: str, path) -> None:  # lets a parallel launcher find the record of a job whose process dies
            append_journal({**entry, "status": "started", "run_id": run_id, "path": str(path), "pid": os.getpid()})

        outcome = run_experiment(cfg, lenient_method_params=multirun, invocation_id=os.environ.get(INVOCATION_ENV), on_start=started)
        entry.update(status=outcome.status, run_id=outcome.run_id, path=str(outcome.path or ""), reason=outcome.reason)
        if outcome.write_error:
            entry["unsaved"] = outcome.write_error
        if outcome.record and outcome.status == "failed":
            entry["error"] = (outcome.record.error or {}).get("message")
        if outcome.status == "skipped":
            log.info("skipped %s: %s", outcome.run_id, outcome.reason)
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr, flush=True)
        entry.update(status="invalid", error=str(exc))
    except RunInterrupted as exc:
        entry.update(status="interrupted", error=str(exc), signal=exc.signal_name, path=str(exc.record_path or ""))
        append_journal(entry)
        raise
    except Exception as exc:  # a bug, not a bad run: keep the sweep going, show the traceback
        log.exception("run crashed before it could be recorded")
        entry.update(status="crashed", error=f"{type(exc).__name__}: {exc}")
    append_journal(entry)


def read_journal(path: str | None) -> list[dict]:
    """The journal's entries (a line cut short by a killed process is skipped)."""
    entries: list[dict] = []
    if not path:
        return entries
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            log.warning("journal: skipping a damaged line")
    return entries


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
        if entry["status"] in ("invalid", "crashed", "interrupted"):
            return 2 if entry["status"] == "invalid" else 1
        if entry.get("unsaved") and not entry.get("path"):
            return EXIT_UNSAVED  # no directory took the record: it is on stderr only (write_fallback said so)
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
        if entry.get("unsaved"):
            print(f"\nslimbench: error: the record is NOT in the results store ({entry['unsaved']}); it is at {entry.get('path') or 'stderr only'}",
                  file=sys.stderr)
            return EXIT_UNSAVED
        return 0 if status == "ok" else 1

    rows, records = [], {}
    entries = sorted(entries, key=lambda e: e.get("job", 0))
    varying, common = split_overrides([e.get("overrides", []) for e in entries])
    for e, overrides in zip(entries, varying):
        metrics: dict = {}
        path = e.get("path")
        if path and Path(path).is_file():
            rec = RunRecord.from_dict(json.loads(Path(path).read_text()))
            records[rec.run_id] = rec
            metrics = {m.key: m.value for m in rec.metrics}
        rows.append(
            [
                str(e.get("job", "")),
                " ".join(overrides) or "-",
                e["status"],
                (e.get("run_id") or "-")[:10],
                fmt(metrics.get("perplexity.perplexity"), "{:.3f}"),
                fmt(metrics.get("latency.decode_tokens_per_s"), "{:.1f}"),
                (e.get("error") or e.get("reason") or "")[:70],
            ]
        )
    shared = f"\nevery job: {' '.join(common)}\n" if common else ""
    print("\n### sweep\n" + shared + "\n" + markdown_table(["job", "overrides", "status", "run_id", "ppl", "decode tok/s", "note"], rows))
    _log_sweep(list(records.values()))
    statuses = {e["status"] for e in entries}
    unsaved = [e for e in entries if e.get("unsaved")]
    for e in unsaved:
        print(f"slimbench: error: job {e.get('job')}: the record is NOT in the results store ({e['unsaved']}); "
              f"it is at {e.get('path') or 'stderr only'}", file=sys.stderr)
    if unsaved:
        return EXIT_UNSAVED
    return 2 if "invalid" in statuses else 1 if statuses & {"failed", "crashed", "interrupted", "killed"} else 0


def _log_sweep(records: list) -> None:
    """The sweep's leaderboard rows to the tracker the jobs used (W&B: one run per invocation)."""
    if not records:
        return
    from slimbench.tracking import make_tracker

    try:
        make_tracker(records[0].config.get("tracker") or {"name": "none"}).log_sweep(records, group=os.environ.get(INVOCATION_ENV))
    except Exception as exc:  # the tracker is a sink: never fail the sweep because of it
        log.warning("tracker failed to log the sweep (%s: %s)", type(exc).__name__, exc)


def split_overrides(jobs: list[list[str]]) -> tuple[list[list[str]], list[str]]:
    """(per job: the overrides whose value varies across the jobs, the overrides every job shares);
    slimbench's ``++`` spelling of validated-node overrides is shown as the user wrote it."""
    parsed = [dict(_override_pair(o) for o in overrides) for overrides in jobs]
    keys = list(dict.fromkeys(k for job in parsed for k in job))
    constant = [k for k in keys if len({job.get(k) for job in parsed}) == 1 and len(parsed) > 1]
    varying = [[f"{k}={v}" for k, v in job.items() if k not in constant] for job in parsed]
    return varying, [f"{k}={parsed[0][k]}" for k in constant]


def _override_pair(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def catalog_main(kind: str, argv: list[str]) -> int:
    """``slimbench methods|evaluators|models [NAME] [--json]``."""
    from slimbench import catalog
    from slimbench.errors import ConfigError

    parser = argparse.ArgumentParser(prog=f"slimbench {kind}", description=f"The {kind} slimbench knows (plugins included).")
    parser.add_argument("name", nargs="?", help=f"one of the {kind}: its parameters")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        if args.json:
            print(json.dumps(getattr(catalog, kind)(args.name), indent=1, default=str))
        else:
            print(getattr(catalog, f"{kind}_text")(args.name))
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr)
        return 2
    return 0


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
    if argv and argv[0] in ("methods", "evaluators", "models"):
        return catalog_main(argv[0], argv[1:])
    if argv and argv[0] == "claims":
        return claims_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    if argv[:1] == ["help"] or any(a in ("-h", "--help") for a in argv):
        print(HELP.format(groups="\n".join(f"  {g:<15} {', '.join(_options(g)) or '-'}" for g in GROUPS)))
        return 0
    from slimbench.errors import ConfigError, RunInterrupted

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
    code, interrupted = 0, None
    try:
        _hydra_main()
    except SystemExit as exc:  # Hydra exits on composition errors after printing them
        code = exc.code if isinstance(exc.code, int) else 1
    except RunInterrupted as exc:  # the run wrote its failed record; say where, exit 128 + signal
        interrupted, code = exc, 128 + exc.signum
    finally:
        sys.argv = saved_argv
        entries = [e for e in read_journal(journal) if e.get("status") != "started"]
        with contextlib.suppress(OSError):
            os.unlink(journal)
        if os.environ.get(JOURNAL_ENV) == journal:
            del os.environ[JOURNAL_ENV]
    if interrupted is not None:
        where = f"failed record: {interrupted.record_path}" if interrupted.record_path else "no record was written"
        print(f"slimbench: error: interrupted by {interrupted.signal_name}; {where}", file=sys.stderr)
        return code
    if informational:
        return code
    return code or _summarize(entries, multirun)


if __name__ == "__main__":
    sys.exit(main())
