"""Scale-out on Hydra's submitit launcher (``submitit_local``: the SLURM launcher's local twin):
six tiny runs, two at a time, one failing on purpose; every other record is written, none is
corrupt, the failure is recorded, and the re-run retries only the failure."""

import importlib.util
import itertools
import json
import re
from datetime import datetime

import pytest

from slimbench.records import RunRecord
from tests.test_cli import TINY, _run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                       reason="needs hydra-submitit-launcher"),
]
STAMP = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - (Starting|Exiting)")


def _job_intervals(sweep_root):
    """(start, end) of every submitit job, from its log."""
    out = []
    for log in sweep_root.glob("**/.submitit/*/*_log.out"):
        stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in STAMP.finditer(log.read_text())]
        out.append((stamps[0], stamps[-1]))
    return out


def _most_at_once(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    return max(itertools.accumulate(step for _, step in events))


def test_a_submitit_sweep_writes_every_record_and_the_rerun_retries_only_the_failure(tmp_path, text_dir):
    # job sparsity=0.4 saves its model below a symlink to itself: the pre-flight's path check passes
    # (a looping link does not exist), the save fails after evaluation, and the run records it
    # (a regular file in the way is refused before the run, as an invalid config, with no record)
    blocker = tmp_path / "saved" / "0.4"
    blocker.parent.mkdir()
    blocker.symlink_to(blocker.name)
    sweep = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20",
             "hydra.sweeper.max_batch_size=2", "method=magnitude", "method.sparsity=0.1,0.2,0.3,0.4,0.5,0.6",
             f"save_dir={tmp_path}/saved/${{method.sparsity}}", *TINY]
    proc, _ = _run(sweep, tmp_path, text_dir, timeout=900)
    print(proc.stdout)  # the sweep's table (pytest -rP shows it)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed run makes the sweep's exit code non-zero

    files = sorted((tmp_path / "results" / "records").glob("*"))
    records = [RunRecord.from_dict(json.loads(p.read_text())) for p in files]  # every file parses: none corrupt
    assert len(records) == 6 and all(p.suffix == ".json" and not p.name.startswith(".tmp") for p in files)
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].stages[0]["config"]["sparsity"] == 0.4
    assert failed[0].error["stage"] == "save" and failed[0].error["type"] == "FileExistsError"
    assert all(r.protocols["latency"]["threads"] == 1 for r in records if r.status == "ok")  # threads = cpus_per_task
    assert _most_at_once(_job_intervals(tmp_path / "results" / "hydra")) == 2  # two jobs at a time, never more

    blocker.unlink()
    again, _ = _run(sweep, tmp_path, text_dir, timeout=900)
    print(again.stdout)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = [line.split("|")[3].strip() for line in again.stdout.splitlines() if line.startswith("| ") and "overrides" not in line]
    assert sorted(statuses) == ["ok"] + ["skipped"] * 5
    records = [RunRecord.from_dict(json.loads(p.read_text())) for p in (tmp_path / "results" / "records").glob("*.json")]
    assert len(records) == 7 and sum(r.status == "ok" for r in records) == 6  # the failed attempt stays on record
    assert {r.run_id for r in records if r.status == "ok"} == {r.run_id for r in records}
