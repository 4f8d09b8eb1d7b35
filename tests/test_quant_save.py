"""A quantized model saves (safetensors + JSON) and reloads with identical outputs."""

import json

import pytest
import torch

from slimbench.kernels.qlinear import QuantLinear
from slimbench.kernels.serialization import load_compressed, save_compressed
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.run import compress


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 32), (8, -1)])
def test_save_reload_identity(tiny_bundle, tmp_path, bits, group):
    bundle = tiny_bundle("tiny-llama")
    compress(RTN(RTNConfig(bits=bits, group_size=group)), bundle, None)
    ids = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        before = bundle.model(ids).logits
    save_compressed(bundle.model, tmp_path / "ckpt", meta={"method": "rtn"})
    doc = json.loads((tmp_path / "ckpt" / "compressed.json").read_text())
    assert len(doc["modules"]) == len(bundle.adapter.linear_paths(bundle.model))
    assert all(m["bits"] == bits for m in doc["modules"].values())
    tied = bundle.adapter.tied_embeddings(bundle.model)
    assert doc["aliases"] == ({"lm_head.weight": "model.embed_tokens.weight"} if tied else {})  # tied tensors written once

    fresh = tiny_bundle("tiny-llama")
    with torch.no_grad():
        assert not torch.equal(fresh.model(ids).logits, before)
    load_compressed(fresh.model, tmp_path / "ckpt")
    layouts = {type(m).__name__ + ":" + m.layout for m in fresh.model.modules() if isinstance(m, QuantLinear)}
    assert layouts == {type(m).__name__ + ":" + m.layout for m in bundle.model.modules() if isinstance(m, QuantLinear)}
    with torch.no_grad():
        assert torch.equal(fresh.model(ids).logits, before)


def test_load_rejects_a_mismatched_model(tiny_bundle, tmp_path):
    bundle = tiny_bundle("tiny-llama")
    compress(RTN(RTNConfig(bits=4, group_size=32)), bundle, None)
    save_compressed(bundle.model, tmp_path / "ckpt")
    with pytest.raises((ValueError, AttributeError, RuntimeError)):
        load_compressed(tiny_bundle("tiny-gemma3").model, tmp_path / "ckpt")


def test_pipeline_saves_the_compressed_model(compose, tiny_bundle, tmp_path):
    from slimbench.run import run_experiment
    from tests.conftest import TINY_EVAL

    cfg = compose("model=tiny-llama", "method=rtn", "method.group_size=32", f"save_dir={tmp_path / 'models'}", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    saved = outcome.record.artifacts["saved_model"]
    assert saved.endswith(outcome.run_id)
    comp = outcome.record.compression
    assert comp.execution_path == "int4-kernel" and comp.bytes_after < comp.bytes_before
    fresh = tiny_bundle("tiny-llama")
    load_compressed(fresh.model, saved)
    assert sum(isinstance(m, QuantLinear) for m in fresh.model.modules()) == len(fresh.adapter.linear_paths(fresh.model))
