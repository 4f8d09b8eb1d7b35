"""The Python API (slimbench.api, re-exported by slimbench): the README's example runs as written in
a fresh process; experiments, compressing your own model, the results DataFrame, the listings."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import slimbench
from slimbench.errors import ConfigError
from tests.conftest import REPO

TINY = {"model": "tiny-llama", "tracker": "none", "eval.evaluators.perplexity.max_windows": 2, "eval.evaluators.perplexity.seqlen": 256,
        "eval.evaluators.latency.repeats": 2, "eval.evaluators.latency.new_tokens": 4, "eval.evaluators.latency.prompt_len": 16}


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 2  # the two experiments
    assert "int4-kernel" in proc.stdout and "compressed-tensors reloaded with load_pretrained" in proc.stdout
    assert "param.sparsity" in proc.stdout and "protocol.perplexity.windows" in proc.stdout
    assert not (REPO / "results" / "runs" / "tiny-llama").exists()


def test_experiment_returns_the_record_metrics_and_model_and_skips_a_stored_run(tmp_path, text_dir):
    kwargs = {**TINY, "paths.data_dir": str(text_dir), "paths.results_dir": str(tmp_path / "runs")}
    first = slimbench.experiment("method=magnitude", method__sparsity=0.5, **kwargs)
    assert first.status == "ok" and first.model is not None
    assert first.metrics["perplexity.perplexity"] == first.record.metric("perplexity", "perplexity")
    zeros = sum(int((m.weight == 0).sum()) for m in first.bundle.adapter.linear_paths(first.model).values())
    assert zeros > 0  # the compressed model itself
    again = slimbench.experiment("method=magnitude", method__sparsity=0.5, **kwargs)
    assert again.status == "skipped" and again.run_id == first.run_id and again.model is None and again.record is not None


@pytest.mark.parametrize("overrides,message", [
    ({"method": "wandaa"}, "unknown method 'wandaa'.*did you mean 'wanda'"),
    ({"method": "wanda", "method__sparsity": 1.5}, r"sparsity must be in \[0, 1\), got 1.5"),
    ({"method": "gptq", "method__bits": 5}, "bits must be one of 2, 3, 4, 8, got 5"),
    ({"method": "rtn", "method__sym": "maybe"}, "sym must be true or false"),
])
def test_bad_experiments_fail_before_loading_in_one_line(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as info:
        slimbench.experiment(**TINY, **overrides, paths__results_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_compress_a_users_model_with_a_pipeline_and_a_corpus_calibration(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    model, tokenizer = bundle.model, bundle.tokenizer  # a plain transformers model and its tokenizer
    out = slimbench.compress(model, [("wanda", {"sparsity": 0.5, "pattern": "2:4"}), ("rtn", {"group_size": 32})], tokenizer=tokenizer,
                             calibration={"nsamples": 4, "seqlen": 64}, data_dir=str(text_dir))
    assert [s.method for s in out.report.stages] == ["wanda", "rtn"] and out.report.execution_path == "masked-dense+int4-kernel"
    assert out.report.calibration["nsamples"] == 4 and out.model is model
    with pytest.raises(ConfigError, match="stage 1 \\(wanda\\) cannot follow rtn"):
        slimbench.compress(tiny_bundle("tiny-llama").model, ["rtn", "wanda"], calibration=torch.randint(0, 200, (2, 32)))
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        slimbench.compress(tiny_bundle("tiny-llama").model, "wanda")


def test_results_dataframe_has_numeric_parameters_stderrs_and_protocol_fields(tmp_path, text_dir):
    kwargs = {**TINY, "paths.data_dir": str(text_dir), "paths.results_dir": str(tmp_path / "runs")}
    for sparsity in (0.3, 0.5):
        slimbench.experiment(method="magnitude", method__sparsity=sparsity, **kwargs)
    df = slimbench.results(tmp_path / "runs").sort_values("param.sparsity")
    assert df["param.sparsity"].tolist() == [0.3, 0.5] and df["param.sparsity"].dtype.kind == "f"
    assert df["perplexity.perplexity.stderr"].notna().all() and df["perplexity.perplexity"].dtype.kind == "f"
    assert df["protocol.perplexity.seqlen"].tolist() == [256, 256] and df["protocol.perplexity.windows"].tolist() == [2, 2]
    assert (df["protocol.latency.threads"] >= 1).all()


def test_the_listings_describe_every_method_with_its_declared_parameters():
    from slimbench.methods import METHODS

    infos = {m["name"]: m for m in slimbench.describe_methods()}
    assert set(infos) == set(METHODS.names())
    for info in infos.values():
        assert info["family"] and info["summary"] and info["execution_path"]
        assert all(p["doc"] for p in info["params"]), info["name"]  # every parameter says what it means
    (wanda,) = slimbench.describe_methods("wanda")
    assert {p["name"]: p["valid"] for p in wanda["params"]}["sparsity"] == "in [0, 1)"
    assert {e["name"] for e in slimbench.describe_evaluators()} >= {"perplexity", "zeroshot", "latency", "size"}
    assert "smollm2-135m" in {m["name"] for m in slimbench.describe_models()}
