"""Layer dropping on the real models (slow): Gemma-3's hybrid cache and SmolLM2's 30 blocks."""

import pytest
import torch

from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.evaluation.latency import kv_cache_bytes
from slimbench.methods import METHODS
from slimbench.models.loaders import LoadContext, resolve_model
from slimbench.run import compress

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model,name", [("smollm2-135m", "attn_drop"), ("gemma3-270m", "attn_drop"), ("gemma3-270m", "block_drop")])
def test_real_model_drop_keeps_cache_consistent(compose, model, name):
    import os
    from pathlib import Path

    cfg = compose(f"model={model}", real_data=True)
    cache = Path(os.environ.get("SLIMBENCH_CACHE_DIR") or Path.home() / ".cache" / "slimbench")
    ctx = LoadContext(cache_dir=cache)
    source, loader, config = resolve_model(cfg["model"], ctx)
    bundle = loader.load(source, config, ctx)
    calib = build_calibration_set(CalibConfig(nsamples=2, seqlen=256), resolve_corpus("wikitext2", "validation", cfg["paths"]["data_dir"]), bundle.tokenizer)
    ids = bundle.tokenizer("The history of the city begins in", return_tensors="pt").input_ids
    with torch.no_grad():
        dense_kv = kv_cache_bytes(bundle.model(ids, use_cache=True).past_key_values)
    n_blocks = len(bundle.adapter.get_blocks(bundle.model))
    cls = METHODS.get(name)
    report = compress(cls(cls.Config(drop_n=4)), bundle, calib)
    with torch.no_grad():
        kv = kv_cache_bytes(bundle.model(ids, use_cache=True).past_key_values)
        cached = bundle.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, use_cache=True)
        uncached = bundle.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert kv == dense_kv * (n_blocks - 4) // n_blocks  # the prompt is shorter than any sliding window
    assert report.stages[0].details["kv_cache_layers"]["after"] == n_blocks - 4
