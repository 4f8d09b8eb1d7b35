"""W&B offline: the run files on disk hold the logged metrics, and a failed run is closed."""

import json
import time

import pytest

from slimbench.run import run_experiment
from slimbench.tracking import offline_records
from tests.conftest import TINY_EVAL


def _logged_items(run_dir):
    """Values in the run file's history and summary records, and its exit codes."""
    run_file = next(run_dir.glob("run-*.wandb"))
    items, exit_codes = {}, []
    for record in offline_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind in ("history", "summary"):
            for item in record.history.item if kind == "history" else record.summary.update:
                items["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        if kind == "exit":
            exit_codes.append(record.exit.exit_code)
    return items, exit_codes


@pytest.mark.parametrize("fail", [False, True])
def test_wandb_offline_run_files_hold_the_metrics(compose, tmp_path, monkeypatch, fail):
    if fail:
        from slimbench.evaluation.latency import Latency

        monkeypatch.setattr(Latency, "__call__", lambda *a: 1 / 0)
    wandb_dir = tmp_path / "wb"
    cfg = compose("model=tiny-llama", "tracker=wandb", f"tracker.dir={wandb_dir}", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == ("failed" if fail else "ok")
    run_dirs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    # the W&B service writes the run file asynchronously: wait (bounded) for its exit record
    deadline = time.monotonic() + 60
    while True:
        items, exit_codes = _logged_items(run_dirs[0])
        if exit_codes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ppl = outcome.record.metric("perplexity", "perplexity")
    assert items["perplexity/perplexity"] == pytest.approx(ppl)
    assert items["run_id"] == outcome.run_id and items["status"] == outcome.status
    assert exit_codes == [1 if fail else 0]
