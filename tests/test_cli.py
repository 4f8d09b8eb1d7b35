"""The ``slimbench`` command as a user runs it (subprocesses)."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from slimbench.store import ResultStore


def _run(args, tmp_path, text_dir, timeout=120):
    env = {
        **os.environ,
        "SLIMBENCH_DATA_DIR": str(text_dir),
        "SLIMBENCH_RESULTS_DIR": str(tmp_path / "results"),
        "SLIMBENCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "slimbench.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds the command spent (its work, unlike wall time not inflated by a busy machine)
    return proc, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@pytest.mark.parametrize(
    "args,message",
    [
        (["method=nope"], "slimbench: error: unknown method 'nope'"),
        (["method=magnitude", "method.sparsity=1.5"], "slimbench: error: method magnitude: sparsity must be in [0, 1), got 1.5"),
        (["paths.data_dir=/nonexistent/data"], "slimbench: error: data dir '/nonexistent/data' does not exist"),
        (["model=nomodel"], "slimbench: error: unknown model 'nomodel'"),
        (["model=hf", "model.id=nobody/no-such-model"], "slimbench: error: unknown model 'nobody/no-such-model'"),
    ],
)
def test_bad_input_fails_fast_in_one_line_without_a_record(tmp_path, text_dir, args, message):
    proc, cpu_s = _run([*args, "tracker=none"], tmp_path, text_dir)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("slimbench: error:")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert cpu_s < 20  # fails before loading any weights (a normal start costs ~3 CPU s)
    assert not list(ResultStore(tmp_path / "results").records())


TINY = ["model=tiny-llama", "tracker=none", "eval.evaluators.perplexity.max_windows=1",
        "eval.evaluators.perplexity.seqlen=128", "eval.evaluators.latency.repeats=1",
        "eval.evaluators.latency.new_tokens=2", "eval.evaluators.latency.prompt_len=8"]


@pytest.mark.slow
def test_multirun_writes_records_the_leaderboard_shows_and_a_rerun_skips(tmp_path, text_dir):
    sweep = ["-m", "method=dense,magnitude", "method.sparsity=0.3,0.5", *TINY]
    proc, _ = _run(sweep, tmp_path, text_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = ResultStore(tmp_path / "results")
    records = list(store.records())
    assert len(records) == 3  # dense ignores sparsity: its two jobs share one run_id
    assert all(r.status == "ok" for r in records)
    assert {r.method_name for r in records} == {"dense", "magnitude"}

    again, _ = _run(sweep, tmp_path, text_dir, timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("| skipped |") == 4
    assert len(list(store.records())) == 3

    board, _ = _run(["leaderboard", "--results-dir", str(tmp_path / "results")], tmp_path, text_dir)
    assert board.returncode == 0
    rows = [line for line in board.stdout.splitlines() if line.startswith("| dense") or line.startswith("| magnitude")]
    assert len(rows) == 3 and (tmp_path / "results" / "leaderboard.csv").is_file()

    only, _ = _run(["leaderboard", "--results-dir", str(tmp_path / "results"), "--methods", "magnitude",
                    "--markdown", str(tmp_path / "board.md")], tmp_path, text_dir)
    assert only.returncode == 0
    written = (tmp_path / "board.md").read_text()
    assert written.count("| magnitude") == 2 and "| dense" not in written


@pytest.mark.slow
def test_a_sweep_goes_on_past_bad_and_failing_jobs(tmp_path, text_dir):
    # a pipeline of two block drops on the 2-block tiny-llama: drop_n=5 is invalid (checked against the config's
    # block count before loading); the second block_drop fails after loading (one block is left); magnitude is fine
    sweep = ["-m", "method=stages", "+method@method.0=block_drop", "method.0.drop_n=5,1", "+method@method.1=magnitude,block_drop",
             "method.1.drop_n=1", "calib.nsamples=2", "calib.seqlen=64", *TINY]
    proc, _ = _run(sweep, tmp_path, text_dir, timeout=300)
    assert proc.returncode == 2  # an invalid job makes the sweep's exit code non-zero
    statuses = [line.split("|")[3].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "overrides" not in line]
    assert statuses == ["invalid", "invalid", "ok", "failed"], proc.stdout
    records = list(ResultStore(tmp_path / "results").records())
    assert sorted(r.status for r in records) == ["failed", "ok"]


def test_single_run_prints_a_result_table(tmp_path, text_dir):
    proc, _ = _run(TINY, tmp_path, text_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| perplexity.perplexity |" in proc.stdout and "record: " in proc.stdout
    path = Path(proc.stdout.split("record: ")[1].split()[0])
    assert path.is_file()


def _table_only(stdout: str) -> bool:
    """stdout holds slimbench's table and the record path, nothing else (no log line, no library print)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return bool(lines) and lines[0].startswith("### ") and all(l.startswith(("|", "### ", "record: ")) for l in lines)


def test_a_default_run_prints_only_its_table_and_no_future_warning(tmp_path, text_dir):
    proc, _ = _run(TINY, tmp_path, text_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _table_only(proc.stdout), proc.stdout
    assert "FutureWarning" not in proc.stderr and "DeprecationWarning" not in proc.stderr


@pytest.mark.slow
def test_a_zero_shot_runs_stdout_holds_only_the_table(tmp_path, data_dir):
    proc, _ = _run([*TINY, "eval=zeroshot-quick", "eval.evaluators.zeroshot.limit=2"], tmp_path, data_dir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _table_only(proc.stdout), proc.stdout
    assert "lm_eval" in proc.stderr  # lm-eval's logs went to stderr (and the log file)


def test_help_lists_the_subcommands_and_the_listings_explain_methods(tmp_path, text_dir):
    help_, _ = _run(["--help"], tmp_path, text_dir)
    assert help_.returncode == 0
    for word in ("leaderboard", "methods", "evaluators", "models", "model ", "method ", "wanda"):
        assert word in help_.stdout
    listing, _ = _run(["methods"], tmp_path, text_dir)
    from slimbench.methods import METHODS

    rows = {line.split("|")[1].strip() for line in listing.stdout.splitlines() if line.startswith("| ")}
    assert listing.returncode == 0 and rows == {"method", *METHODS.names()}  # the header and every method
    wanda, _ = _run(["methods", "wanda"], tmp_path, text_dir)
    assert "| sparsity | float | 0.5 | in [0, 1) |" in wanda.stdout and "arXiv 2306.11695" in wanda.stdout
    bad, _ = _run(["methods", "wand"], tmp_path, text_dir)
    assert bad.returncode == 2 and "did you mean 'wanda'" in bad.stderr


def test_sweep_summaries_show_the_shared_overrides_once_and_per_job_only_what_varies():
    from slimbench.cli import split_overrides

    jobs = [["++model.x=1", "method=dense", "++method.sparsity=0.3", "tracker=none"],
            ["++model.x=1", "method=magnitude", "++method.sparsity=0.3", "tracker=none"],
            ["++model.x=1", "method=magnitude", "++method.sparsity=0.5", "tracker=none"]]
    varying, common = split_overrides(jobs)
    assert common == ["model.x=1", "tracker=none"]
    assert varying == [["method=dense", "method.sparsity=0.3"], ["method=magnitude", "method.sparsity=0.3"],
                       ["method=magnitude", "method.sparsity=0.5"]]


@pytest.mark.parametrize("model,temporary", [("tiny-llama", True), ("smollm2-135m", False)])
def test_sweep_smoke_tests_write_into_a_temporary_directory(model, temporary):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "SLIMBENCH_RESULTS_DIR")}
    proc = subprocess.run(["bash", "-c", f"MODEL={model}; source sweeps/out.sh; echo $OUT; echo ${{SLIMBENCH_RESULTS_DIR:-unset}}"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env)
    out, results = proc.stdout.split()
    if temporary:
        assert Path(out).is_dir() and "results/" not in out and results == f"{out}/runs"
    else:
        assert out == "results/leaderboards" and results == "unset"
    runner = (Path(__file__).resolve().parents[1] / "sweeps/run.sh").read_text()
    assert "source sweeps/out.sh" in runner and '--out "${LEADERBOARD_DIR:-$OUT}"' in runner
