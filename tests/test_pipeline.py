"""The run pipeline end to end on tiny models: records, skipping, failures."""

import json
import math

import pytest

from slimbench.errors import ConfigError
from slimbench.models.dit import DiT, DiTConfig
from slimbench.evaluation.perplexity import Perplexity
from slimbench.run import run_experiment
from slimbench.store import ResultStore
from tests.conftest import TINY_EVAL


def _metric(record, evaluator, name):
    return next(m["value"] for m in record["metrics"] if m["evaluator"] == evaluator and m["name"] == name)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-moe"])
def test_causal_lm_dense_run_writes_a_complete_record(compose, model):
    cfg = compose(f"model={model}", "method=dense", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.get("error")
    record = json.loads(outcome.path.read_text())
    assert record["schema_version"] == 1 and record["run_id"] == outcome.run_id
    assert record["model"]["name"] == model and record["method"]["name"] == "dense"
    assert record["compression"]["execution_path"] == "dense"
    assert math.isfinite(_metric(record, "perplexity", "perplexity"))
    assert _metric(record, "latency", "decode_tokens_per_s") > 0
    assert record["protocol"]["perplexity"]["windows"] == 2 and record["protocol"]["perplexity"]["seqlen"] == 256
    assert record["protocol_fingerprint"] and record["data"]["wikitext2/test"]["file_sha256"]
    assert record["environment"]["packages"]["torch"]
    assert set(record["timings"]) >= {"load_s", "compress_s", "total_s"}


def test_diffusion_model_goes_through_the_pipeline(compose):
    cfg = compose("model=tiny-dit", "method=dense", "eval=latency", "eval.evaluators.latency.repeats=2")
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.get("error")
    assert _metric(outcome.record, "latency", "step_ms") > 0
    dit = DiT(DiTConfig(**cfg["model"]["config"]))
    assert _metric(outcome.record, "size", "params") == sum(p.numel() for p in dit.parameters())


def test_unsupported_evaluator_for_kind_is_rejected_before_loading(compose):
    cfg = compose("model=tiny-dit", "eval=quick")
    with pytest.raises(ConfigError, match="evaluator 'perplexity' does not support diffusion"):
        run_experiment(cfg)


def test_rerun_skips_and_force_reruns(compose):
    cfg = compose("model=tiny-llama", "method=magnitude", "method.sparsity=0.4", *TINY_EVAL)
    first = run_experiment(cfg)
    again = run_experiment(cfg)
    assert first.status == "ok" and again.status == "skipped" and again.run_id == first.run_id
    forced = run_experiment({**cfg, "force": True})
    assert forced.status == "ok"
    assert len(ResultStore(cfg["paths"]["results_dir"]).attempts(first.run_id)) == 2


def test_run_id_depends_on_what_defines_the_experiment(compose):
    base = run_experiment(compose("model=tiny-llama", "method=magnitude", "method.sparsity=0.4", *TINY_EVAL))
    other = run_experiment(compose("model=tiny-llama", "method=magnitude", "method.sparsity=0.6", *TINY_EVAL))
    moved = run_experiment(compose("model=tiny-llama", "method=magnitude", "method.sparsity=0.4", "tracker=none", *TINY_EVAL))
    assert base.run_id != other.run_id and moved.run_id == base.run_id


def test_failing_evaluator_is_recorded_and_the_others_still_run(compose, monkeypatch):
    def boom(self, bundle, ctx):
        raise RuntimeError("perplexity exploded")

    monkeypatch.setattr(Perplexity, "__call__", boom)
    outcome = run_experiment(compose("model=tiny-llama", *TINY_EVAL))
    record = outcome.record
    assert outcome.status == "failed" and record["status"] == "failed"
    assert record["evaluator_errors"][0]["evaluator"] == "perplexity"
    assert "perplexity exploded" in record["evaluator_errors"][0]["message"]
    assert {m["evaluator"] for m in record["metrics"]} == {"size", "latency"}
    # a failed record does not count as done: the next run tries again
    monkeypatch.undo()
    assert run_experiment(compose("model=tiny-llama", *TINY_EVAL)).status == "ok"


def test_crash_during_compression_is_recorded_as_failed(compose, monkeypatch):
    from slimbench.methods.pruning.magnitude import Magnitude

    monkeypatch.setattr(Magnitude, "apply", lambda self, bundle, calib: 1 / 0)
    outcome = run_experiment(compose("model=tiny-llama", "method=magnitude", *TINY_EVAL))
    assert outcome.status == "failed"
    assert outcome.record["error"]["stage"] == "compress" and outcome.record["error"]["type"] == "ZeroDivisionError"
    assert outcome.record["metrics"] == []


def test_multirun_grid_parameters_are_ignored_by_methods_that_lack_them(compose):
    cfg = compose("model=tiny-llama", "method=dense", "++method.sparsity=0.3", *TINY_EVAL)
    with pytest.raises(ConfigError, match="unknown parameter 'sparsity'"):
        run_experiment(cfg)  # a single run: an error
    outcome = run_experiment(cfg, lenient_method_params=True)  # a sweep job: ignored and recorded
    assert outcome.status == "ok" and outcome.record["method"]["ignored_parameters"] == {"sparsity": 0.3}
    dense = run_experiment(compose("model=tiny-llama", "method=dense", *TINY_EVAL))
    assert dense.status == "skipped" and dense.run_id == outcome.run_id
    typo = compose("model=tiny-llama", "method=magnitude", "++method.sparsty=0.3", *TINY_EVAL)
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        run_experiment(typo, lenient_method_params=True)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (("method=magnitude", "method.sparsity=1.5"), r"sparsity must be in \[0, 1\)"),
        (("paths.data_dir=/nonexistent",), "data dir '/nonexistent' does not exist"),
        (("model=hf", "model.id=/nonexistent/model"), "model directory '/nonexistent/model' does not exist"),
        (("model=hf", "model.id=nobody/no-such-model", "model.name=x"), "unknown model 'nobody/no-such-model'"),
        (("eval.evaluators.perplexity.seqlen=1",), "seqlen must be >= 2"),
        (("calib.nsamples=0", "method=magnitude"), None),  # magnitude needs no calibration: fine
    ],
)
def test_bad_input_is_rejected_before_any_weights_load(compose, monkeypatch, overrides, match):
    from slimbench.models import loaders

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    for cls in (loaders.FromConfigLoader, loaders.GGUFPackageLoader, loaders.HFLoader):
        monkeypatch.setattr(cls, "load", no_loading)
    cfg = compose("model=tiny-llama", *TINY_EVAL, *overrides)
    if match is None:
        from slimbench.run import plan_run

        assert plan_run(cfg).calib_config is None
        return
    with pytest.raises(ConfigError, match=match):
        run_experiment(cfg)
    assert not list(ResultStore(cfg["paths"]["results_dir"]).records())


def test_local_hf_directory_loads_through_the_hf_loader(compose, tiny_bundle, tmp_path):
    bundle = tiny_bundle("tiny-llama")
    local = tmp_path / "my-model"
    bundle.model.save_pretrained(local)
    bundle.tokenizer.save_pretrained(local)
    cfg = compose("model=hf", f"model.id={local}", "model.name=my-model", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.get("error")
    assert outcome.record["model"]["path"] == str(local.resolve())
    reference = run_experiment(compose("model=tiny-llama", *TINY_EVAL))
    assert _metric(outcome.record, "perplexity", "perplexity") == pytest.approx(_metric(reference.record, "perplexity", "perplexity"), rel=1e-6)
