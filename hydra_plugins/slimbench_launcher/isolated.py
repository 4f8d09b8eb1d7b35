"""A parallel sweep launcher in which every job runs in its own process.

hydra-joblib-launcher runs jobs in a loky worker pool; when one worker dies (SIGKILL, out of
memory, a segfault) loky raises ``TerminatedWorkerError``, the pool is torn down and the whole
sweep aborts: the other in-flight jobs are killed without a record and the queued jobs never
start. Here each job is a child process forked from the launcher (at most ``n_jobs`` at a time),
so a job whose process dies fails alone:

* the job's run had already written its attempt file as a ``failed``/``Interrupted`` placeholder
  naming the stage it reached (``slimbench.run``); the launcher rewrites it to say which signal
  (or exit status) ended the process, and journals the job as failed;
* the other jobs keep running and the queued ones start; every job that got as far as running
  has a record.

SIGINT reaches the children with the terminal's process group; SIGTERM sent to the launcher is
forwarded to the running children (each records a failed run with the signal), no new job
starts, and the launcher exits after them.

    slimbench -m hydra/launcher=parallel method=dense,magnitude      (conf/hydra/launcher/parallel.yaml)
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class IsolatedLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, **_: Any) -> None:
        if int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.n_jobs must be >= 1, got {n_jobs}")
        self.n_jobs = int(n_jobs)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("launching %d jobs, %d at a time, each in its own process", len(job_overrides), self.n_jobs)
        ctx = multiprocessing.get_context("fork")
        state = Singleton.get_state()
        pending = deque(enumerate(job_overrides))
        running: dict[Any, tuple[int, Sequence[str], Any]] = {}
        returns: list[JobReturn] = [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]
        stopping: list[int] = []

        def forward(signum, frame):  # SIGTERM to the launcher: stop the children (they record it) and start nothing new
            stopping.append(signum)
            for _, _, proc in running.values():
                if proc.pid:
                    os.kill(proc.pid, signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            self._run(pending, running, stopping, ctx, state, initial_job_idx)
        except KeyboardInterrupt:  # Ctrl-C reached the jobs too: let them record it, then stop
            stopping.append(signal.SIGINT)
            for _, _, proc in running.values():
                proc.join(timeout=120)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if stopping:
            log.error("stopped by %s; %d job(s) not started", signal.Signals(stopping[0]).name, len(pending))
            sys.exit(128 + stopping[0])
        return returns

    def _run(self, pending: deque, running: dict, stopping: list, ctx, state: dict, initial_job_idx: int) -> None:
        """Start jobs while there is room (and no stop was asked); reap them as they end."""
        while pending or running:
            while pending and len(running) < self.n_jobs and not stopping:
                i, overrides = pending.popleft()
                idx = initial_job_idx + i
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                proc = ctx.Process(target=_child, args=(idx, list(overrides), self.hydra_context, self.config,
                                                        self.task_function, state), name=f"slimbench-job-{idx}")
                proc.start()
                running[proc.sentinel] = (idx, overrides, proc)
            if not running:
                break
            for sentinel in multiprocessing.connection.wait(list(running)):
                idx, overrides, proc = running.pop(sentinel)
                proc.join()
                if proc.exitcode != 0:
                    job_died(idx, list(overrides), proc.exitcode)


def _child(idx: int, overrides: list[str], hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction,
           state: dict) -> None:
    """One job in a forked process (what Hydra's launchers do per job: the sweep config with this
    job's overrides, then ``run_job``). Exits 0, or 128 + signal when a signal stopped the run."""
    from slimbench.errors import RunInterrupted

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the launcher's forwarding handler
    setup_globals()
    Singleton.set_state(state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    try:
        run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except RunInterrupted as exc:
        sys.exit(128 + exc.signum)


def exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name} (signal {-exitcode})"
    if exitcode is not None and exitcode > 128 and exitcode - 128 in signal.valid_signals():
        return f"stopped by {signal.Signals(exitcode - 128).name}"
    return f"exited with status {exitcode}"


def job_died(idx: int, overrides: list[str], exitcode: int | None) -> None:
    """A job's process ended abnormally: say so in its record (if its run had started) and in the journal."""
    from slimbench.cli import append_journal, read_journal
    from slimbench.run import mark_killed

    reason = exit_reason(exitcode)
    journal = os.environ.get("SLIMBENCH_JOURNAL")
    entries = [e for e in read_journal(journal) if e.get("job") == idx] if journal else []
    if any(e.get("status") not in ("started",) for e in entries):
        return  # the job journaled its own outcome (e.g. it recorded a signal) before exiting
    started = next((e for e in reversed(entries) if e.get("status") == "started"), None)
    entry = {"job": idx, "overrides": overrides, "status": "failed", "error": f"the job's process was {reason}"}
    if started is not None:
        entry.update(run_id=started.get("run_id"), path=started.get("path"))
        message = mark_killed(Path(started["path"]), reason) if started.get("path") else None
        entry["error"] = message or entry["error"]
    else:
        entry["error"] += " before its run started (no record)"
    log.error("job #%d (%s): %s", idx, " ".join(overrides), entry["error"])
    append_journal(entry)
