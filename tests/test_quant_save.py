"""A quantized model saves as compressed-tensors and reloads with identical outputs; the first
checkpoint format (compressed.json) still reads."""

import json

import pytest
import torch
from safetensors.torch import save_file

from slimbench.checkpoint import load_compressed, load_pretrained, save_pretrained
from slimbench.kernels.qlinear import QuantLinear
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.run import compress


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 32), (8, -1)])
def test_save_reload_identity(tiny_bundle, tmp_path, bits, group):
    bundle = tiny_bundle("tiny-llama")
    compress(RTN(RTNConfig(bits=bits, group_size=group)), bundle, None)
    ids = torch.randint(0, 200, (1, 12))
    before = _logits(bundle.model, ids)
    saved = save_pretrained(bundle, tmp_path / "ckpt")
    assert saved.format == "compressed-tensors" and saved.verified.startswith("reloaded")
    doc = json.loads((tmp_path / "ckpt" / "slimbench.json").read_text())
    assert len(doc["modules"]) == len(bundle.adapter.linear_paths(bundle.model))
    assert all(m["bits"] == bits for m in doc["modules"].values())
    assert doc["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}  # tied tensors written once

    model = load_pretrained(tmp_path / "ckpt")
    layouts = {m.layout for m in model.modules() if isinstance(m, QuantLinear)}
    assert layouts == {m.layout for m in bundle.model.modules() if isinstance(m, QuantLinear)}
    assert torch.equal(_logits(model, ids), before)


def test_run_saves_the_compressed_model(compose, tmp_path):
    from slimbench.run import run_experiment
    from tests.conftest import TINY_EVAL

    cfg = compose("model=tiny-llama", "method=rtn", "method.group_size=32", f"save_dir={tmp_path / 'models'}", *TINY_EVAL)
    outcome = run_experiment(cfg)
    assert outcome.status == "ok", outcome.record.error
    saved = outcome.record.artifacts["saved_model"]
    assert saved["path"].endswith(outcome.run_id) and saved["format"] == "compressed-tensors"
    card = (tmp_path / "models" / outcome.run_id / "README.md").read_text()
    ppl = outcome.record.metric("perplexity", "perplexity")
    assert outcome.run_id in card and f"{ppl:.6g}" in card and "rtn" in card
    comp = outcome.record.compression
    assert comp.execution_path == "int4-kernel" and comp.bytes_after < comp.bytes_before
    model = load_pretrained(saved["path"])
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14


def _write_version_1(model, directory):
    """A checkpoint as slimbench wrote them before slimbench.json (compressed.json, version 1)."""
    directory.mkdir()
    packed = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    tensors, modules = {}, {}
    for name, module in packed.items():
        info, parts = module.export()
        modules[name] = {**info, "type": "quant"}
        tensors.update({f"{name}.{k}": v for k, v in parts.items()})
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{n}.") for n in packed) and key != "lm_head.weight":
            tensors[key] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    doc = {"format": "slimbench-compressed", "version": 1, "modules": modules,
           "aliases": {"lm_head.weight": "model.embed_tokens.weight"}, "meta": {}}
    (directory / "compressed.json").write_text(json.dumps(doc))


def test_version_1_checkpoints_still_load_into_a_dense_model(tiny_bundle, tmp_path):
    from slimbench.errors import CheckpointError

    bundle = tiny_bundle("tiny-llama")
    compress(RTN(RTNConfig(bits=4, group_size=32)), bundle, None)
    ids = torch.randint(0, 200, (1, 12))
    _write_version_1(bundle.model, tmp_path / "v1")
    fresh = tiny_bundle("tiny-llama")
    load_compressed(fresh.model, tmp_path / "v1")
    assert torch.equal(_logits(fresh.model, ids), _logits(bundle.model, ids))
    with pytest.raises(CheckpointError, match="load_compressed"):  # the new loader points to the old one
        load_pretrained(tmp_path / "v1")
    with pytest.raises((CheckpointError, AttributeError, RuntimeError)):
        load_compressed(tiny_bundle("tiny-gemma3").model, tmp_path / "v1")
