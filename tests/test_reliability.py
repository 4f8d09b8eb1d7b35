"""Fault injection: no wrong record marked ok, no lost result.

NaN model -> a failed record (strict JSON, re-run not skipped); SIGTERM mid-run -> a failed
record with the stage and the signal, tracker closed; a full disk at write time -> the record on
stderr and in a fallback file the message names (exit 3); a killed sweep job -> the sweep goes on
and every job has a record; local checkpoints identified by content; store hygiene (modes,
locks, journals, placeholders).
"""

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slimbench import cli
from slimbench.records import RunRecord
from slimbench.run import plan_run, run_experiment
from slimbench.store import ResultStore
from tests.conftest import TINY_EVAL


def _strict(text: str) -> dict:
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def nan_model(monkeypatch):
    """tiny-llama whose final norm is NaN: every logit is NaN."""
    from slimbench.models.loaders import FromConfigLoader

    original = FromConfigLoader.load

    def load(self, *args, **kwargs):
        bundle = original(self, *args, **kwargs)
        torch.nn.init.constant_(bundle.model.model.norm.weight, float("nan"))
        return bundle

    monkeypatch.setattr(FromConfigLoader, "load", load)


# -- NaN ------------------------------------------------------------------------------------------
def test_a_nan_model_is_a_failed_run_with_a_strict_json_record_and_is_not_skipped(compose, nan_model):
    cfg = compose("model=tiny-llama", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "failed"
    error = outcome.record.error
    assert error["stage"] == "evaluate" and error["type"] == "NonFiniteMetric"
    assert "perplexity: non-finite metric(s) perplexity=nan" in error["message"]
    data = _strict(outcome.path.read_text())  # no bare NaN in the file
    ppl = next(m for m in data["metrics"] if m["name"] == "perplexity")
    assert ppl["value"] is None
    assert any("non-finite numbers written as null" in n and ".value=nan" in n for n in data["notes"])
    assert RunRecord.from_dict(data).status == "failed"
    assert run_experiment(cfg).status == "failed"  # not skipped: a failed record never counts as done


def test_the_store_writes_strict_json_and_notes_what_it_replaced(tmp_path):
    record = RunRecord(run_id="r", attempt_id="a", status="ok", artifacts={"x": {"err": float("inf"), "ok": 1.5}})
    path = ResultStore(tmp_path).write(record.to_dict())
    data = _strict(path.read_text())
    assert data["artifacts"]["x"] == {"err": None, "ok": 1.5}
    assert data["notes"] == ["non-finite numbers written as null: artifacts.x.err=inf"]


# -- signals ----------------------------------------------------------------------------------------
class _RecordingTracker:
    def __init__(self):
        self.calls = []

    def start(self, **kwargs):
        self.calls.append("start")

    def log_record(self, record, **kwargs):
        self.calls.append(("log", record.status))

    def finish(self, ok):
        self.calls.append(("finish", ok))


def test_sigterm_mid_run_records_a_failed_run_with_stage_and_signal_and_closes_the_tracker(compose, monkeypatch):
    from slimbench.errors import RunInterrupted
    from slimbench.evaluation.perplexity import Perplexity

    tracker = _RecordingTracker()
    monkeypatch.setattr("slimbench.run.make_tracker", lambda cfg: tracker)
    monkeypatch.setattr(Perplexity, "__call__", lambda self, bundle, ctx: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5))
    before = signal.getsignal(signal.SIGTERM)
    cfg = compose("model=tiny-llama", *TINY_EVAL)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(cfg)
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone again
    data = _strict(Path(info.value.record_path).read_text())
    assert data["status"] == "failed"
    assert {k: data["error"][k] for k in ("stage", "type", "signal")} == {"stage": "evaluate", "type": "RunInterrupted", "signal": "SIGTERM"}
    assert tracker.calls == ["start", ("log", "failed"), ("finish", False)]


def test_while_a_run_executes_its_attempt_file_says_how_far_it_got(compose, monkeypatch):
    from slimbench.evaluation.perplexity import Perplexity

    seen = {}
    original = Perplexity.__call__

    def spy(self, bundle, ctx):
        store = ResultStore(cfg["paths"]["results_dir"])
        (placeholder,) = list(store.records())
        seen.update(status=placeholder.status, error=placeholder.error)
        return original(self, bundle, ctx)

    monkeypatch.setattr(Perplexity, "__call__", spy)
    cfg = compose("model=tiny-llama", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert seen["status"] == "failed" and seen["error"]["type"] == "Interrupted" and seen["error"]["stage"] == "evaluate"
    assert seen["error"]["pid"] == os.getpid()
    assert outcome.status == "ok"
    (final,) = list(ResultStore(cfg["paths"]["results_dir"]).records())  # the same attempt file, replaced
    assert final.status == "ok" and final.error is None


def _cli(args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "slimbench.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, cwd=Path(__file__).resolve().parents[1])


def _wait_for_placeholder(records_dir: Path, match, timeout=120.0) -> dict:
    """The first in-progress placeholder record satisfying ``match`` (polls the store)."""
    end = time.time() + timeout
    while time.time() < end:
        for path in records_dir.glob("*.json") if records_dir.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                if data["status"] == "failed" and data["error"]["type"] == "Interrupted" and match(data):
                    return data
        time.sleep(0.05)
    raise AssertionError("no run started")


SLOW_TINY = ["model=tiny-llama", "tracker=none", "eval.evaluators.perplexity.max_windows=1", "eval.evaluators.perplexity.seqlen=128",
             "eval.evaluators.latency.repeats=40", "eval.evaluators.latency.new_tokens=8", "eval.evaluators.latency.prompt_len=8"]


@pytest.mark.slow
def test_sigterm_to_the_slimbench_command_leaves_a_failed_record_and_exit_143(tmp_path, text_dir):
    env = {"SLIMBENCH_DATA_DIR": str(text_dir), "SLIMBENCH_RESULTS_DIR": str(tmp_path / "results"), "SLIMBENCH_CACHE_DIR": str(tmp_path / "c")}
    proc = _cli(SLOW_TINY, env)
    placeholder = _wait_for_placeholder(tmp_path / "results" / "records", lambda d: d["error"]["stage"] == "evaluate")
    os.kill(placeholder["error"]["pid"], signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = [x for x in err.splitlines() if x.startswith("slimbench: error:")]
    assert line and line[0].startswith("slimbench: error: interrupted by SIGTERM; failed record: ")
    data = _strict(Path(line[0].split("failed record: ")[1]).read_text())
    assert data["status"] == "failed" and data["error"]["signal"] == "SIGTERM" and data["error"]["stage"] == "evaluate"
    assert not list((tmp_path / "results" / "locks").iterdir())


@pytest.mark.slow
def test_a_killed_sweep_job_fails_alone_and_every_job_has_a_record(tmp_path, text_dir):
    """hydra/launcher=parallel: SIGKILL one job's process mid-run; the others (in flight and queued) finish."""
    env = {"SLIMBENCH_DATA_DIR": str(text_dir), "SLIMBENCH_RESULTS_DIR": str(tmp_path / "results"), "SLIMBENCH_CACHE_DIR": str(tmp_path / "c")}
    proc = _cli(["-m", "hydra/launcher=parallel", "method=magnitude", "method.sparsity=0.1,0.2,0.3,0.4", *SLOW_TINY], env, timeout=600)
    victim = _wait_for_placeholder(tmp_path / "results" / "records",
                                   lambda d: d["method"]["stages"][0]["config"]["sparsity"] == 0.2 and d["error"]["stage"] == "evaluate")
    os.kill(victim["error"]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]  # a failed job, reported; not a crashed sweep
    records = {r.stages[0]["config"]["sparsity"]: r for r in ResultStore(tmp_path / "results").records()}
    assert sorted(records) == [0.1, 0.2, 0.3, 0.4]
    assert [records[s].status for s in (0.1, 0.3, 0.4)] == ["ok", "ok", "ok"]
    killed = records[0.2]
    assert killed.status == "failed" and killed.error["message"] == "the run's process was killed by SIGKILL (signal 9) during evaluate"
    rows = [line for line in out.splitlines() if line.startswith("| ") and "sparsity=0.2" in line]
    assert rows and "| failed |" in rows[0] and "killed by SIGKILL" in rows[0]


# -- a full disk --------------------------------------------------------------------------------------
def test_a_record_the_store_cannot_take_goes_to_stderr_and_a_fallback_file(compose, tmp_path, text_dir, monkeypatch):
    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("slimbench.store.write_atomic", full_disk)
    monkeypatch.setenv("SLIMBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()
    argv = ["model=tiny-llama", f"paths.data_dir={text_dir}", f"paths.results_dir={tmp_path / 'results'}",
            f"paths.cache_dir={tmp_path / 'cache'}", *TINY_EVAL[1:], "tracker=none"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    assert code == cli.EXIT_UNSAVED == 3
    (saved,) = list((tmp_path / "fallback").iterdir())
    lines = err.getvalue().splitlines()
    message = next(x for x in lines if x.startswith("slimbench: error: could not write the record"))
    assert "No space left on device" in message and str(saved) in message
    record = RunRecord.from_dict(_strict(saved.read_text()))
    assert record.status == "ok" and record.metric("perplexity", "perplexity") > 0
    start = lines.index(message) + 1
    on_stderr = _strict("\n".join(lines[start:start + saved.read_text().count("\n") + 1]))
    assert on_stderr["run_id"] == record.run_id  # the full record is on stderr too
    assert not list((tmp_path / "results" / "records").glob("*.json"))


# -- store hygiene --------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_records_are_created_with_the_mode_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = ResultStore(tmp_path).write(RunRecord(run_id="r", attempt_id="a", status="ok").to_dict())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_lock_files_are_removed_and_a_stale_one_is_not_trusted(tmp_path):
    store = ResultStore(tmp_path)
    with store.lock("r") as got:
        assert got and (tmp_path / "locks" / "r.lock").exists()
        with store.lock("r") as second:
            assert not second  # held
    assert not (tmp_path / "locks" / "r.lock").exists()
    (tmp_path / "locks" / "r.lock").write_text("")  # left by a killed process: flock is free, so it is taken
    with store.lock("r") as got:
        assert got
    assert not (tmp_path / "locks" / "r.lock").exists()


def test_the_cli_removes_its_journal(tmp_path, monkeypatch, text_dir):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["method=nope"]) == 2  # refused before the journal exists
        assert cli.main(["model=tiny-llama", "calib.nsamples=abc", f"paths.results_dir={tmp_path / 'r'}",
                         f"paths.data_dir={text_dir}", "tracker=none"]) == 2
    assert list((tmp_path / "tmp").iterdir()) == []
    assert "SLIMBENCH_JOURNAL" not in os.environ


# -- identity --------------------------------------------------------------------------------------------
def test_a_local_checkpoint_is_identified_by_its_content(compose, tiny_bundle, tmp_path, monkeypatch):
    from slimbench.models import loaders

    local = tmp_path / "ckpt"
    bundle = tiny_bundle("tiny-llama")
    bundle.model.save_pretrained(local)
    bundle.tokenizer.save_pretrained(local)
    cfg = compose("model=hf", f"model.id={local}", "model.name=mine", *TINY_EVAL)
    first = plan_run(cfg)
    hashed = []
    real = loaders._sha256_of
    monkeypatch.setattr(loaders, "_sha256_of", lambda paths: hashed.append(paths) or real(paths))
    assert plan_run(cfg).run_id == first.run_id and hashed == []  # unchanged files: hashes come from the cache
    with torch.no_grad():
        bundle.model.model.norm.weight.add_(1.0)  # same shapes, same sizes: only the content differs
    bundle.model.save_pretrained(local)
    changed = plan_run(cfg)
    assert changed.run_id != first.run_id
    assert changed.source.identity["content_sha256"] != first.source.identity["content_sha256"]
    again = {p[0].name for p in hashed}  # only the files save_pretrained rewrote were hashed again (not the tokenizer's)
    assert "model.safetensors" in again and again <= {"model.safetensors", "config.json", "generation_config.json"}
