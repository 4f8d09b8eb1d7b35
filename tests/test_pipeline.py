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
    """A metric from a record file's JSON."""
    return next(m["value"] for m in record["metrics"] if m["evaluator"] == evaluator and m["name"] == name)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-moe"])
def test_causal_lm_dense_run_writes_a_complete_record(compose, model):
    cfg = compose(f"model={model}", "method=dense", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    record = json.loads(outcome.path.read_text())
    assert record["schema_version"] == 2 and record["run_id"] == outcome.run_id
    assert record["model"]["name"] == model and record["method"]["name"] == "dense"
    assert record["compression"]["execution_path"] == "dense" and record["compression"]["baseline"]
    assert math.isfinite(_metric(record, "perplexity", "perplexity"))
    assert _metric(record, "latency", "decode_tokens_per_s") > 0
    ppl = record["protocols"]["perplexity"]
    assert ppl["windows"] == 2 and ppl["seqlen"] == 256 and ppl["fingerprint"]
    assert "threads" not in ppl and record["protocols"]["latency"]["threads"] >= 1  # machine settings: latency's only
    assert record["protocol_fingerprint"] and record["data"]["wikitext2/test"]["file_sha256"]
    assert record["environment"]["packages"]["torch"]
    assert set(record["timings"]) >= {"load_s", "compress_s", "total_s"}


def test_diffusion_model_goes_through_the_pipeline(compose):
    cfg = compose("model=tiny-dit", "method=dense", "eval=latency", "eval.evaluators.latency.repeats=2")
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    assert outcome.record.metric("latency", "step_ms") > 0
    dit = DiT(DiTConfig(**cfg["model"]["config"]))
    assert outcome.record.metric("size", "params") == sum(p.numel() for p in dit.parameters())


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
    assert outcome.status == "failed" and record.status == "failed"
    assert record.evaluator_errors[0]["evaluator"] == "perplexity"
    assert "perplexity exploded" in record.evaluator_errors[0]["message"]
    assert {m.evaluator for m in record.metrics} == {"size", "latency"}
    # a failed record does not count as done: the next run tries again
    monkeypatch.undo()
    assert run_experiment(compose("model=tiny-llama", *TINY_EVAL)).status == "ok"


def test_crash_during_compression_is_recorded_as_failed(compose, monkeypatch):
    from slimbench.methods.pruning.magnitude import Magnitude

    monkeypatch.setattr(Magnitude, "apply", lambda self, bundle, calib: 1 / 0)
    outcome = run_experiment(compose("model=tiny-llama", "method=magnitude", *TINY_EVAL))
    assert outcome.status == "failed"
    assert outcome.record.error["stage"] == "compress" and outcome.record.error["type"] == "ZeroDivisionError"
    assert outcome.record.metrics == []


def test_multirun_grid_parameters_are_ignored_by_methods_that_lack_them(compose):
    cfg = compose("model=tiny-llama", "method=dense", "++method.sparsity=0.3", *TINY_EVAL)
    with pytest.raises(ConfigError, match="unknown parameter 'sparsity'"):
        run_experiment(cfg)  # a single run: an error
    outcome = run_experiment(cfg, lenient_method_params=True)  # a sweep job: ignored and recorded
    assert outcome.status == "ok" and outcome.record.stages[0]["ignored_parameters"] == {"sparsity": 0.3}
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
        (("calib.nsamples=0", "method=magnitude"), "calib.nsamples must be >= 1"),  # validated even where unused
        (("calib.seqlen=4096", "method=magnitude"), None),  # but its data and context only where a stage calibrates
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
    assert outcome.status == "ok", outcome.record.error
    assert outcome.record.model["path"] == str(local.resolve())
    reference = run_experiment(compose("model=tiny-llama", *TINY_EVAL))
    assert outcome.record.metric("perplexity", "perplexity") == pytest.approx(reference.record.metric("perplexity", "perplexity"), rel=1e-6)


# -- pipelines ---------------------------------------------------------------------------------------
def test_a_two_stage_pipeline_writes_one_record_with_both_stages(compose):
    from slimbench.cli import preflight

    cfg = compose(*preflight(["pipeline=[wanda,gptq]", "method.0.pattern=2:4", "method.1.group_size=32"]),
                  "model=tiny-llama", "calib.nsamples=4", "calib.seqlen=64", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    rec = outcome.record
    assert rec.method_name == "wanda+gptq" and [s["name"] for s in rec.stages] == ["wanda", "gptq"]
    assert rec.stages[1]["config"]["preserve_zeros"] is True  # null resolved: after a pruning stage
    comp = rec.compression
    assert comp.execution_path == "masked-dense+int4-kernel" and comp.speedup_expected
    assert [s.method for s in comp.stages] == ["wanda", "gptq"] and comp.stages[0].fused_with == ["gptq"]  # one engine pass
    assert comp.sparsity == pytest.approx(0.5, abs=0.02)  # 2:4 zeros survive quantization (counted on the packed codes)
    assert comp.sparsity >= 0.5
    assert rec.metric("size", "bits_per_weight") == pytest.approx(4 + 32 / 32, abs=0.01)  # 4 bits + fp16 scale and zero per 32
    layers = {x.name: x for x in comp.stages[1].layers}
    assert all(x.change == "quantized" and x.sparsity >= 0.5 for x in layers.values())
    unfused = run_experiment({**cfg, "fuse_stages": False})
    assert unfused.run_id != outcome.run_id and unfused.record.compression.stages[0].fused_with == []


def test_gptq_preserve_zeros_defaults_to_true_only_after_pruning(compose):
    from slimbench.cli import preflight
    from slimbench.run import plan_run

    def gptq_config(*overrides):
        cfg = compose(*preflight(list(overrides)), "model=tiny-llama", *TINY_EVAL)
        return plan_run(cfg).stages[-1].method.config

    assert gptq_config("method=gptq").preserve_zeros is False  # alone: as the reference, zeros are quantized
    assert gptq_config("pipeline=[sparsegpt,gptq]").preserve_zeros is True
    assert gptq_config("pipeline=[wanda,gptq]", "method.1.preserve_zeros=false").preserve_zeros is False  # explicit wins


def test_low_rank_then_quantization_quantizes_the_factors(compose):
    from slimbench.cli import preflight

    cfg = compose(*preflight(["pipeline=[svd_llm,rtn]", "method.1.bits=8", "method.1.group_size=-1"]),
                  "model=tiny-llama", "calib.nsamples=4", "calib.seqlen=64", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    comp = outcome.record.compression
    assert comp.execution_path == "low-rank+int8-kernel"
    quantized = comp.stages[1].layers
    assert {x.role.split(".")[-1] for x in quantized} == {"first", "second"} and all(x.bits == 8 for x in quantized)
    assert comp.linear_params_after <= 0.8 * comp.linear_params_before  # 20% of the parameters removed ...
    # ... and the factors stored in 8 bits: + scale/offset per row and, for rank 25, K padded to 32 (tiny shapes)
    assert 8 < comp.bits_per_weight_after < 12
