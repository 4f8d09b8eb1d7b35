"""Real offline models (slow: GGUF conversion on first use, real forward passes)."""

import math

import pytest
import torch
import torch.nn.functional as F

from slimbench.run import run_experiment
from tests.conftest import TINY_EVAL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    import os

    return os.environ.get("SLIMBENCH_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize(
    "model,geometry,family",
    [("smollm2-135m", (9, 3, 64), "llama"), ("gemma3-270m", (4, 1, 256), "gemma3")],
)
def test_packaged_model_runs_and_matches_a_plain_forward(compose, shared_cache, model, geometry, family):
    cfg = compose(f"model={model}", f"paths.cache_dir={shared_cache}", *TINY_EVAL, real_data=True)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    ppl = next(m["value"] for m in outcome.record["metrics"] if m["name"] == "perplexity")
    assert math.isfinite(ppl) and 1 < ppl < 200

    from slimbench.models.loaders import LoadContext, resolve_model

    ctx = LoadContext(cache_dir=__import__("pathlib").Path(shared_cache))
    source, loader, config = resolve_model(cfg["model"], ctx)
    bundle = loader.load(source, config, ctx)
    assert bundle.adapter.family == family
    assert bundle.adapter.attention_geometry(bundle.model.config) == geometry
    assert bundle.adapter.tied_embeddings(bundle.model)
    # the harness number equals a direct computation over the same two windows
    from slimbench.data.corpora import load_corpus, resolve_corpus

    text = load_corpus(resolve_corpus("wikitext2", "test", cfg["paths"]["data_dir"])).text
    ids = bundle.tokenizer(text, return_tensors="pt").input_ids[0]
    nll = []
    with torch.no_grad():
        for i in range(2):
            w = ids[i * 256 : (i + 1) * 256][None]
            nll.append(F.cross_entropy(bundle.model(w).logits[0, :-1], w[0, 1:]).item())
    assert ppl == pytest.approx(math.exp(sum(nll) / 2), rel=1e-4)
