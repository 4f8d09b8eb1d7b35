"""Sweeps as configs: an experiment preset's grids, expanded into jobs and their run_ids.

An experiment preset (``conf/experiment/<name>.yaml``) selects the ``slimbench`` sweeper
(``hydra_plugins/slimbench_sweeper``) and lists grids; ``slimbench -m experiment=<name>`` runs
the union of their products on any Hydra launcher. The same expansion lets the leaderboard find
an experiment's records without an index of our own: every job's config is composed and planned
(validation only, no weights load) and its run_id computed; a record belongs to the experiment
when its run_id is one of them. A run_id includes the device and the thread count (latency
depends on them), so when a job leaves ``threads`` unset the ids are computed for every thread
count the store's records were measured with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from slimbench.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
HYDRA_KEYS = ("hydra.", "hydra/", "+hydra.", "++hydra.")


def sweep_value(value: Any) -> str:
    """A grid value as the sweeper's override text: lists become ``a,b``, booleans ``true``."""
    if isinstance(value, (list, tuple)):
        return ",".join(sweep_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def expand_grids(grids: Iterable[dict], arguments: list[str], common: dict | None = None, config_loader=None) -> list[list[str]]:
    """The jobs (override lists) of the union of ``grids``' products, in order, duplicates once.
    ``common`` is swept in every grid; ``arguments`` (the command line's task overrides) apply
    to every job and win over a grid's value for the same key (BasicSweeper's rule)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    jobs: dict[tuple, list[str]] = {}
    for grid in list(grids) or [{}]:
        spec = [f"{k}={sweep_value(v)}" for k, v in {**(common or {}), **dict(grid)}.items()] + list(arguments)
        for job in BasicSweeper.split_arguments(parser.parse_overrides(spec), None)[0]:
            jobs.setdefault(tuple(job), list(job))
    return list(jobs.values())


@dataclass
class Job:
    """One job of an experiment: its overrides and, if it validates, its planned identity."""

    overrides: list[str]
    identity: dict | None = None
    threads_fixed: bool = False
    error: str | None = None

    def run_ids(self, thread_counts: Iterable[int]) -> set[str]:
        """The run_ids this job has on machines with these thread counts (one if threads is set)."""
        from slimbench.records import stable_hash

        if self.identity is None:
            return set()
        counts = [self.identity["threads"]] if self.threads_fixed else sorted(set(thread_counts) | {self.identity["threads"]})
        return {stable_hash({**self.identity, "threads": t}) for t in counts}


def split_hydra(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(task overrides, hydra overrides): Hydra hands only the task overrides to the sweeper."""
    hydra = [o for o in overrides if o.lstrip("~").startswith(HYDRA_KEYS)]
    return [o for o in overrides if o not in hydra], hydra


def experiment_jobs(name: str, overrides: list[str] = (), conf_dir: Path = CONF_DIR) -> list[Job]:
    """Every job ``slimbench -m experiment=<name> <overrides>`` runs, planned without loading weights.
    ``overrides`` are given as on the command line after slimbench's pre-flight rewriting."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from slimbench.configs import to_plain
    from slimbench.run import plan_run

    task, hydra = split_hydra([f"experiment={name}", *overrides])
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        try:
            master = compose(config_name="config", overrides=task + hydra, return_hydra_config=True)
        except HydraException as exc:
            raise ConfigError(f"experiment {name!r}: {str(exc).strip().splitlines()[0]}") from None
        sweeper = OmegaConf.to_container(master.hydra.sweeper, resolve=False)
        grids = sweeper.get("grids") or [sweeper.get("params") or {}]
        common = sweeper.get("params") if sweeper.get("grids") else None
        jobs = []
        for overrides_of_job in expand_grids(grids, task, common=common):
            job = Job(overrides_of_job)
            try:
                cfg = to_plain(compose(config_name="config", overrides=overrides_of_job))
                plan = plan_run(cfg, lenient_method_params=True)
                job.identity, job.threads_fixed = plan.identity, cfg.get("threads") is not None
            except (ConfigError, HydraException) as exc:
                job.error = str(exc).strip().splitlines()[0]
            jobs.append(job)
    return jobs
