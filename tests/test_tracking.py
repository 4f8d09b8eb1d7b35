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


def _wait_for_exit(run_dir, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while True:
        records = list(offline_records(next(run_dir.glob("run-*.wandb"))))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _table_rows(run_dir, history_key):
    """Rows of a logged table, read from the run's files (media/table/<key>_*.table.json)."""
    path = next(run_dir.glob(f"files/media/table/{history_key}_*.table.json"))
    doc = json.loads(path.read_text())
    return [dict(zip(doc["columns"], row)) for row in doc["data"]]


def test_wandb_run_holds_results_tables_per_stage_layers_samples_and_artifacts(compose, tmp_path, monkeypatch):
    from slimbench.evaluation.base import EvalResult, Metric
    from slimbench.evaluation.size import Size

    real_size = Size.__call__

    def size_with_samples(self, bundle, ctx):  # an evaluator that keeps per-document samples when asked
        result = real_size(self, bundle, ctx)
        assert ctx.log_samples
        return EvalResult(result.metrics + [Metric("toy", 0.5, 0.1)], result.protocol, samples={"toy": [{"doc_id": 0, "target": "a", "acc": 1.0}]})

    monkeypatch.setattr(Size, "__call__", size_with_samples)
    wandb_dir = tmp_path / "wb"
    from slimbench.cli import pipeline_overrides

    cfg = compose("model=tiny-llama", *pipeline_overrides("[magnitude,rtn]"), "method.1.group_size=32", "tracker=wandb", f"tracker.dir={wandb_dir}",
                  "tracker.log_model=true", "tracker.log_samples=true", f"save_dir={tmp_path / 'models'}", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    run_dir = next((wandb_dir / "wandb").glob("offline-run-*"))
    records = _wait_for_exit(run_dir)
    artifacts = {r.artifact.name: r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact"}
    assert artifacts[f"record-{outcome.run_id}"] == "run-record" and artifacts[f"model-{outcome.run_id}"] == "model"
    items, _ = _logged_items(run_dir)
    ppl = outcome.record.metric_entry("perplexity", "perplexity")
    assert items["perplexity/perplexity_stderr"] == pytest.approx(ppl.stderr)  # stderrs as summary fields
    results = _table_rows(run_dir, "results")
    assert {(r["evaluator"], r["metric"]) for r in results} == {(m.evaluator, m.name) for m in outcome.record.metrics}
    assert next(r for r in results if r["metric"] == "perplexity")["stderr"] == pytest.approx(ppl.stderr)
    (board,) = _table_rows(run_dir, "leaderboard")
    assert board["run_id"] == outcome.run_id and board["param.0.sparsity"] == 0.5
    for i, stage in enumerate(outcome.record.compression.stages):  # every stage's typed layer reports
        rows = _table_rows(run_dir, f"compression/layers/{i}-{stage.method}")
        assert [r["layer"] for r in rows] == [x.name for x in stage.layers] and rows
    assert _table_rows(run_dir, "size/samples/toy") == [{"doc_id": 0, "target": "a", "filtered_resps": None, "acc": 1.0, "doc": "null"}]
    samples_file = outcome.record.artifacts["samples"]["size.toy"]
    assert json.loads(open(samples_file).read()) == {"doc_id": 0, "target": "a", "acc": 1.0}


def test_a_sweep_is_logged_as_one_run_with_every_jobs_leaderboard_row(compose, tmp_path):
    from slimbench.tracking import WandbConfig, WandbTracker

    records = [run_experiment(compose("model=tiny-llama", f"method={m}", *TINY_EVAL)).record for m in ("dense", "magnitude")]
    WandbTracker(WandbConfig(dir=str(tmp_path / "wb"))).log_sweep(records, group="inv123")
    run_dir = next((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    _wait_for_exit(run_dir)
    rows = _table_rows(run_dir, "sweep/leaderboard")
    assert [r["method"] for r in rows] == ["dense", "magnitude"] and {r["run_id"] for r in rows} == {r.run_id for r in records}
