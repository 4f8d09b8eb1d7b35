"""Zero-shot evaluation: local task data converted to lm-eval's hub rows, and the evaluator
run end to end through lm-eval on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from slimbench.data.zeroshot import (
    DEFAULT_TASKS,
    ZEROSHOT_TASKS,
    eval_split_of,
    lm_eval_tasks_dir,
    load_local_task,
    read_task_yaml,
    write_task_configs,
)
from slimbench.errors import ConfigError, DataUnavailableError
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.zeroshot import ZeroShot, ZeroShotConfig, metrics_from_results

# Row counts of the standard splits (SOURCES.md) and the built-in lm-eval task each one feeds.
EXPECTED = {
    "piqa": (1838, "validation"),
    "arc_easy": (2376, "test"),
    "arc_challenge": (1172, "test"),
    "boolq": (3270, "validation"),
    "winogrande": (1267, "validation"),
    "openbookqa": (500, "test"),
    "lambada_openai": (5153, "test"),
}


def test_every_default_task_has_local_data_and_a_spec():
    assert set(DEFAULT_TASKS) == set(EXPECTED) == set(ZEROSHOT_TASKS.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_gives_the_hub_fields_and_the_split_row_count(name, data_dir):
    task = load_local_task(name, data_dir)
    rows, split = EXPECTED[name]
    assert len(task.rows) == rows and task.spec.split == split
    assert all(tuple(r) == task.spec.fields for r in task.rows)
    # the JSONL written for lm-eval is exactly these rows
    lines = task.jsonl.decode("utf-8").splitlines()
    assert len(lines) == rows and json.loads(lines[0]) == task.rows[0]
    # and the built-in lm-eval task evaluates the split the local file holds
    assert eval_split_of(read_task_yaml(lm_eval_tasks_dir() / task.spec.lm_eval_yaml)) == split


def test_converted_values_match_the_hub_conventions(data_dir):
    piqa = load_local_task("piqa", data_dir).rows
    assert {r["label"] for r in piqa} == {0, 1}
    arc = load_local_task("arc_easy", data_dir).rows[0]
    assert arc["question"].startswith("Which statement best explains why photosynthesis")
    assert arc["choices"]["label"] == ["A", "B", "C", "D"] and arc["answerKey"] == "A"
    assert {len(r["choices"]["text"]) for r in load_local_task("arc_challenge", data_dir).rows} == {3, 4, 5}
    boolq = load_local_task("boolq", data_dir).rows
    # SuperGLUE's copy (what lm-eval reads): "<title> -- <passage>", label 0/1, same order
    assert boolq[0]["passage"].startswith("Ethanol fuel -- All biomass goes through")
    assert boolq[0]["label"] == 0 and boolq[8]["question"] == "can u drive in canada with us license"
    assert sum(r["label"] for r in boolq) == 2033  # 2,033 true / 1,237 false
    wino = load_local_task("winogrande", data_dir).rows
    assert {r["answer"] for r in wino} == {"1", "2"} and "_" in wino[0]["sentence"]
    obqa = load_local_task("openbookqa", data_dir).rows[0]
    assert obqa["question_stem"].startswith("A person wants to start saving money") and obqa["answerKey"] == "B"


def test_task_configs_include_lm_evals_own_definition(data_dir, tmp_path):
    tasks = [load_local_task(n, data_dir) for n in ("arc_easy", "winogrande")]
    task_dir = write_task_configs(tasks, tmp_path)
    assert task_dir == write_task_configs(tasks, tmp_path)  # content-addressed, idempotent
    for task in tasks:
        cfg = read_task_yaml(task_dir / f"{task.name}.yaml")
        builtin = read_task_yaml(task.builtin_yaml)
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "output_type", "metadata"):
            assert cfg.get(key) == builtin.get(key), key
        data_file = Path(cfg["dataset_kwargs"]["data_files"][task.spec.split])
        assert data_file.read_bytes() == task.jsonl and cfg["training_split"] is None


def test_bad_task_configs_are_rejected(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="hellaswag.*paths.data_dir=null"):
        ZeroShot(ZeroShotConfig(tasks=("piqa", "hellaswag"))).check(EvalContext(data_dir, "cpu", 0, 1, tmp_path))
    with pytest.raises(ConfigError, match="num_fewshot > 0"):
        ZeroShot(ZeroShotConfig(num_fewshot=5)).check(EvalContext(data_dir, "cpu", 0, 1, tmp_path))
    for bad, match in (({"limit": 0}, "limit"), ({"tasks": ()}, "at least one"), ({"tasks": ("piqa", "piqa")}, "twice"),
                       ({"batch_size": 0}, "batch_size"), ({"bootstrap_iters": 0}, "bootstrap_iters")):
        with pytest.raises(ConfigError, match=match):
            ZeroShotConfig(**bad)


def test_missing_or_mismatched_files_are_reported(tmp_path):
    (tmp_path / "piqa").mkdir()
    with pytest.raises(DataUnavailableError, match="piqa/valid.jsonl"):
        load_local_task("piqa", tmp_path)
    (tmp_path / "piqa" / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataUnavailableError, match="1 rows but 2 labels"):
        load_local_task("piqa", tmp_path)


def test_metrics_from_lm_eval_results():
    out = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.03, "acc_norm,none": 0.62, "acc_norm_stderr,none": 0.02},
            "lambada_openai": {"perplexity,none": 30.0, "perplexity_stderr,none": "N/A", "acc,none": 0.4, "acc_stderr,none": 0.04},
        },
        "higher_is_better": {"piqa": {"acc": True, "acc_norm": True}, "lambada_openai": {"perplexity": False, "acc": True}},
    }
    got = {m.name: m for m in metrics_from_results(out, ("piqa", "lambada_openai"))}
    assert set(got) == {"piqa.acc", "piqa.acc_norm", "lambada_openai.perplexity", "lambada_openai.acc", "mean.acc"}
    assert got["lambada_openai.perplexity"].stderr is None and got["lambada_openai.perplexity"].higher_is_better is False
    assert got["mean.acc"].value == pytest.approx(0.5)
    assert got["mean.acc"].stderr == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)


def test_evaluator_runs_lm_eval_on_the_in_memory_model(tiny_bundle, data_dir, tmp_path):
    bundle = tiny_bundle("tiny-llama")
    ev = ZeroShot(ZeroShotConfig(limit=2, batch_size=4))
    ctx = EvalContext(data_dir=data_dir, device="cpu", seed=0, threads=1, cache_dir=tmp_path)
    fingerprints = ev.check(ctx)
    assert set(fingerprints) == {f"zeroshot/{t}" for t in DEFAULT_TASKS}
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    result = ev(bundle, ctx)

    names = {m.name for m in result.metrics}
    for task in DEFAULT_TASKS:
        assert f"{task}.acc" in names
        assert result.protocol["tasks"][task]["docs_evaluated"] == 2
        assert result.protocol["tasks"][task]["docs_in_split"] == EXPECTED[task][0]
        assert result.protocol["tasks"][task]["converted_sha256"] == fingerprints[f"zeroshot/{task}"]["converted_sha256"]
    assert {"piqa.acc_norm", "arc_easy.acc_norm", "lambada_openai.perplexity", "mean.acc"} <= names
    assert "boolq.acc_norm" not in names  # lm-eval's boolq defines acc only
    accs = [m.value for m in result.metrics if m.name in {f"{t}.acc" for t in DEFAULT_TASKS}]
    assert len(accs) == 7 and set(accs) <= {0.0, 0.5, 1.0}  # two documents per task
    mean = next(m for m in result.metrics if m.name == "mean.acc")
    assert mean.value == pytest.approx(sum(accs) / 7)
    assert result.protocol["lm_eval_version"] and result.protocol["limit"] == 2
    assert all(before[k].equal(v) for k, v in bundle.model.state_dict().items())  # evaluation changed nothing


def test_suites_run_through_the_pipeline_and_are_fingerprinted_apart(compose):
    from slimbench.leaderboard.tables import leaderboard_markdown
    from slimbench.run import plan_run, run_experiment

    small = ("model=tiny-llama", "eval.evaluators.zeroshot.tasks=[piqa,winogrande]")
    with pytest.raises(ConfigError, match="hellaswag"):  # validated before any weights load
        plan_run(compose(*small, "eval=zeroshot", "eval.evaluators.zeroshot.tasks=[hellaswag]", real_data=True))
    full, quick = plan_run(compose(*small, "eval=zeroshot", real_data=True)), plan_run(compose(*small, "eval=zeroshot-quick", real_data=True))
    assert (full.suite, quick.suite) == ("zeroshot", "zeroshot-quick") and full.run_id != quick.run_id
    assert full.data["zeroshot/piqa"]["converted_sha256"] == quick.data["zeroshot/piqa"]["converted_sha256"]

    outcome = run_experiment(compose(*small, "eval=zeroshot-quick", "eval.evaluators.zeroshot.limit=2", real_data=True))
    record = outcome.record
    assert outcome.status == "ok", record.error
    metrics = {(m.evaluator, m.name) for m in record.metrics}
    assert {("zeroshot", "piqa.acc"), ("zeroshot", "winogrande.acc"), ("zeroshot", "mean.acc"), ("size", "params")} <= metrics
    protocol = record.protocols["zeroshot"]
    assert protocol["limit"] == 2 and protocol["tasks"]["piqa"]["version"] == 1.0
    assert "zeroshot-quick" in leaderboard_markdown([record]) and "PIQA" in leaderboard_markdown([record])


@pytest.mark.slow
def test_without_a_data_dir_any_lm_eval_task_is_accepted_and_names_are_checked(tmp_path):
    ctx = EvalContext(data_dir=None, device="cpu", seed=0, threads=1, cache_dir=tmp_path)
    fps = ZeroShot(ZeroShotConfig(tasks=("piqa", "hellaswag"))).check(ctx)
    assert fps["zeroshot/hellaswag"] == {"task": "hellaswag", "source": "hub"}
    with pytest.raises(ConfigError, match="did you mean 'piqa'"):
        ZeroShot(ZeroShotConfig(tasks=("piqaa",))).check(ctx)


@pytest.mark.slow
def test_crosscheck_against_lm_evals_builtin_task_on_a_tiny_model(tiny_bundle, data_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("crosscheck", Path(__file__).parents[1] / "benchmarks" / "zeroshot_crosscheck.py")
    crosscheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crosscheck)
    bundle = tiny_bundle("tiny-llama")
    ev = ZeroShot(ZeroShotConfig(tasks=("arc_challenge",), limit=8, batch_size=4))
    ctx = EvalContext(data_dir=data_dir, device="cpu", seed=0, threads=1, cache_dir=tmp_path)
    ev.check(ctx)
    ours = {m.name: m.value for m in ev(bundle, ctx).metrics}
    theirs = crosscheck.builtin_task_results(bundle.model, bundle.tokenizer, "arc_challenge", data_dir, 8, 4, tmp_path)
    assert theirs["n"]["effective"] == 8 and theirs["config_source"].endswith("arc/arc_challenge.yaml")
    assert ours["arc_challenge.acc"] == theirs["results"]["acc,none"]
    assert ours["arc_challenge.acc_norm"] == theirs["results"]["acc_norm,none"]
