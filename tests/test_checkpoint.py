"""Saved models (slimbench.checkpoint): every registered method's save_dir round-trips in a fresh
process; the standard formats load with plain transformers (no slimbench import); a corrupted or
edited directory is refused with a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimbench.checkpoint import _doc_sha256, load_pretrained, read_manifest, save_pretrained
from slimbench.configs import config_to_dict
from slimbench.errors import CheckpointError
from slimbench.methods import METHODS
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.models.loaders import LoadContext, resolve_model
from slimbench.run import compress
from tests.conftest import CONF_DIR, FIXTURE_DATA_DIR, REPO
from tests.test_methods_contract import CONTRACT, _calibration, _method_from_preset

# the format each method's model is saved in (tiny models, the contract's parameters)
FORMATS = {
    "dense": "hf", "magnitude": "hf", "wanda": "hf", "sparsegpt": "hf", "block_drop": "hf", "shortgpt": "hf",
    "rtn": "compressed-tensors", "gptq": "compressed-tensors", "awq": "compressed-tensors", "smoothquant": "compressed-tensors",
    "mixed_precision": "compressed-tensors",
    "svd": "slimbench", "fwsvd": "slimbench", "asvd": "slimbench", "svd_llm": "slimbench", "attn_drop": "slimbench",
    "mlp_drop": "slimbench", "joint_drop": "slimbench", "numerical_pruning": "slimbench", "flap": "slimbench",
    "moe_topk": "slimbench", "moe_topp": "slimbench",  # runtime hooks (and unfused experts)
    # runtime hooks are no weights: the slimbench format records the stage and installs it again at load
    "fora": "slimbench", "first_block_cache": "slimbench", "lazydit": "slimbench",
}
DIT_METHODS = ("dense", "magnitude", "rtn", "svd")  # the methods that support diffusion models, on the tiny DiT
RELOAD = """
import json, sys, torch
import slimbench
cases = json.loads(sys.argv[1])
out = {}
for name, d in cases.items():
    ref = torch.load(d + "/probe.pt")
    model = slimbench.load_pretrained(d)
    with torch.no_grad():
        got = model(**ref["inputs"])
    got = got.logits if hasattr(got, "logits") else got
    out[name] = bool(torch.equal(got, ref["output"]))
print(json.dumps(out))
"""
PLAIN_TRANSFORMERS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
cases = json.loads(sys.argv[1])
out = {}
for name, d in cases.items():
    ref = torch.load(d + "/probe.pt")
    model = AutoModelForCausalLM.from_pretrained(d)
    with torch.no_grad():
        got = model(**ref["inputs"]).logits
    out[name] = float((got - ref["output"]).abs().max())
out["slimbench imported"] = "slimbench" in sys.modules
print(json.dumps(out))
"""


def build(model: str, **config):
    """A tiny model from its preset (``config`` overrides its transformers config)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["config"] = {**model_cfg.get("config", {}), **config}
    ctx = LoadContext(cache_dir=Path("/nonexistent-cache"))
    source, loader, loader_config = resolve_model(model_cfg, ctx)
    return loader.load(source, loader_config, ctx)


def probe(bundle, directory: Path) -> None:
    """The saved model's output on a fixed input, stored next to it for the fresh process."""
    inputs = bundle.io.example_inputs(bundle.model, 2, 12, torch.Generator().manual_seed(1))
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    bundle.hooks.reset_state()
    with torch.no_grad():
        output = bundle.model(**inputs)
    torch.save({"inputs": inputs, "output": output.logits if hasattr(output, "logits") else output}, directory / "probe.pt")


def fresh_process(script: str, cases: dict[str, str], cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               # the same thread count as this process: grouped MoE dispatch differs in the last bit between 1 and 2 threads
                               "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every registered method applied to its contract model (and the diffusion ones to the tiny
    DiT), saved; name -> (SavedModel, directory)."""
    root = tmp_path_factory.mktemp("saved")
    cases = [(name, name, CONTRACT[name]) for name in METHODS.names() if name in CONTRACT]
    cases += [(f"{name}@tiny-dit", name, CONTRACT[name]) for name in DIT_METHODS]
    out = {}
    for key, name, contract in cases:
        cls, method = _method_from_preset(name, contract.overrides)
        bundle = build("tiny-dit" if key.endswith("@tiny-dit") else contract.model)
        calib = _calibration(bundle, FIXTURE_DATA_DIR) if cls.requires_calibration else None
        compress(method, bundle, calib)
        directory = root / key
        out[key] = save_pretrained(bundle, directory, stages=[{"name": name, "config": config_to_dict(method.config)}])
        probe(bundle, directory)
    return out


@pytest.fixture(scope="module")
def reloaded(saved, tmp_path_factory):
    """Each saved directory loaded by slimbench.load_pretrained in ONE fresh process: identical outputs?"""
    return fresh_process(RELOAD, {k: s.path for k, s in saved.items()}, tmp_path_factory.mktemp("cwd"))


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_saves_and_reloads_in_a_fresh_process_with_identical_outputs(name, saved, reloaded):
    assert name in CONTRACT, f"method {name} has no contract row (tests/test_methods_contract.py)"
    assert saved[name].format == FORMATS[name]
    assert saved[name].verified.startswith("reloaded with load_pretrained")  # checked in-process while saving
    assert reloaded[name] is True  # and in a fresh process that never saw the compressed model
    for key in (f"{name}@tiny-dit",) if name in DIT_METHODS else ():
        assert saved[key].format == "slimbench" and reloaded[key] is True


def test_standard_formats_load_with_plain_transformers_within_the_formats_tolerance(saved, tmp_path):
    standard = {k: s.path for k, s in saved.items() if s.format != "slimbench" and "@" not in k
                and not read_manifest(s.path)["notes"]}
    assert {"dense", "magnitude", "block_drop", "rtn", "gptq", "awq", "smoothquant"} <= set(standard)
    diffs = fresh_process(PLAIN_TRANSFORMERS, standard, tmp_path)
    assert diffs.pop("slimbench imported") is False
    for name, diff in diffs.items():
        if saved[name].format == "hf":
            assert diff == 0.0, name  # the same tensors
        else:  # slimbench's CPU kernels run in bfloat16, transformers dequantizes to float32; W8A8 rounds activations
            assert diff < 2e-2, (name, diff)


def test_mixed_bit_widths_with_zero_points_say_transformers_cannot_load_them(saved):
    doc = read_manifest(saved["mixed_precision"].path)
    assert doc["weights_format"] == "compressed-tensors" and "transformers 5.x cannot load" in doc["notes"][0]
    assert "cannot load" in (Path(saved["mixed_precision"].path) / "README.md").read_text()


def test_groups_that_do_not_divide_k_are_written_with_a_common_dividing_group(tmp_path):
    # K = 96 (q/k/v/o/gate/up) and 128 (down) with groups of 64: 96 = 64 + 32
    bundle = build("tiny-llama", hidden_size=96, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    compress(RTN(RTNConfig(bits=4, group_size=64)), bundle, None)
    saved = save_pretrained(bundle, tmp_path / "g64")
    quant = json.loads((tmp_path / "g64" / "config.json").read_text())["quantization_config"]
    (group,) = quant["config_groups"].values()  # one scheme: transformers decompresses with one
    assert group["weights"]["group_size"] == 32 and group["weights"]["strategy"] == "group" and quant["dequantize"] is True
    assert "quantized with groups of 64" in (tmp_path / "g64" / "README.md").read_text()
    probe(bundle, tmp_path / "g64")
    diffs = fresh_process(PLAIN_TRANSFORMERS, {"g64": saved.path}, tmp_path)
    assert diffs["g64"] < 2e-2 and diffs["slimbench imported"] is False
    ref = torch.load(tmp_path / "g64" / "probe.pt")
    with torch.no_grad():
        assert torch.equal(load_pretrained(saved.path)(**ref["inputs"]).logits, ref["output"])


# -- integrity ------------------------------------------------------------------------------------
def _save_rtn(tmp_path, name="ckpt"):
    bundle = build("tiny-llama")
    compress(RTN(RTNConfig(bits=4, group_size=32)), bundle, None)
    return save_pretrained(bundle, tmp_path / name)


def _save_svd(tmp_path):
    from slimbench.methods.lowrank.svd import SVD, SVDConfig

    bundle = build("tiny-llama")
    compress(SVD(SVDConfig(ratio=0.3)), bundle, None)
    return save_pretrained(bundle, tmp_path / "svd")


def _edit_manifest(directory: Path, edit, rehash: bool) -> None:
    path = Path(directory) / "slimbench.json"
    doc = json.loads(path.read_text())
    edit(doc)
    if rehash:  # a consistent forgery (or a bug): the content checks must still catch it
        doc["sha256"] = _doc_sha256(doc)
    path.write_text(json.dumps(doc))


def _one_line_error(directory, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_pretrained(directory)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_flipped_bytes_in_the_weights_are_refused(tmp_path):
    saved = _save_svd(tmp_path)
    path = Path(saved.path) / "slimbench.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    _one_line_error(saved.path, "fails its sha256 check")


def test_truncated_or_missing_files_are_refused(tmp_path):
    saved = _save_rtn(tmp_path)
    weights = Path(saved.path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _one_line_error(saved.path, "not a readable safetensors file")
    weights.unlink()
    _one_line_error(saved.path, "model.safetensors is missing")
    (Path(saved.path) / "slimbench.json").unlink()
    _one_line_error(saved.path, "no slimbench.json")


@pytest.mark.parametrize("field,value", [("bits", 3), ("group_size", 64), ("in_features", 32)])
def test_edited_module_descriptions_are_refused(tmp_path, field, value):
    saved = _save_rtn(tmp_path)
    layer = "model.layers.0.mlp.up_proj"

    def edit(doc):
        doc["modules"][layer][field] = value
        if field != "in_features":
            doc["modules"][layer]["ct_scheme"]["bits" if field == "bits" else "group_size"] = value

    _edit_manifest(saved.path, edit, rehash=False)
    _one_line_error(saved.path, "does not match its sha256")
    _edit_manifest(saved.path, edit, rehash=True)
    message = _one_line_error(saved.path, layer)
    assert "stored as" in message or "weight_shape" in message


def test_edited_slimbench_format_descriptions_are_refused(tmp_path):
    saved = _save_svd(tmp_path)
    layer = "model.layers.1.self_attn.o_proj"
    _edit_manifest(saved.path, lambda doc: doc["modules"][layer].update(rank=doc["modules"][layer]["rank"] - 1), rehash=True)
    _one_line_error(saved.path, "weights do not fit|tensor .* the architecture needs")


def test_edited_tensor_shapes_and_quantization_config_are_refused(tmp_path):
    saved = _save_rtn(tmp_path)
    key = "model.layers.0.mlp.up_proj.weight_scale"
    _edit_manifest(saved.path, lambda doc: doc["tensors"][key].update(shape=[128, 4]), rehash=True)
    _one_line_error(saved.path, f"tensor '{key}' is")

    saved = _save_rtn(tmp_path, "ckpt2")
    config_path = Path(saved.path) / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 64
    config_path.write_text(json.dumps(config))
    _one_line_error(saved.path, "quantization_config differs")


def test_a_model_with_runtime_hooks_is_saved_in_slimbench_format_and_its_hooks_reinstalled(tmp_path, monkeypatch):
    from tests.test_hooks import ScaleConfig, ScaleMLP

    monkeypatch.setitem(METHODS._items, "scale_mlp", ScaleMLP)
    bundle = build("tiny-llama")
    report = compress(ScaleMLP(ScaleConfig()), bundle, None)
    saved = save_pretrained(bundle, tmp_path / "hooked", stages=[{"name": "scale_mlp", "config": report.stages[0].config}])
    assert saved.format == "slimbench" and read_manifest(saved.path)["runtime_stages"][0]["name"] == "scale_mlp"
    model = load_pretrained(saved.path)  # compared with the hooked model while saving: identical outputs
    from slimbench.hooks import HookRegistry

    assert sorted(HookRegistry.of(model).names()) == sorted(bundle.hooks.names())
    with pytest.raises(CheckpointError, match="runtime hooks"):
        save_pretrained(bundle, tmp_path / "unnamed")


def test_a_model_saved_on_another_device_type_is_repacked_for_this_ones_kernels(tmp_path):
    bundle = build("tiny-llama")
    compress(RTN(RTNConfig(bits=4, group_size=32)), bundle, None)
    saved = save_pretrained(bundle, tmp_path / "elsewhere")
    probe(bundle, tmp_path / "elsewhere")
    _edit_manifest(saved.path, lambda doc: doc.update(device="cuda"), rehash=True)  # as if saved on a GPU
    model = load_pretrained(saved.path)
    ref = torch.load(tmp_path / "elsewhere" / "probe.pt")
    with torch.no_grad():
        assert torch.equal(model(**ref["inputs"]).logits, ref["output"])  # rebuilt from codes for this device's layout


def test_dropped_blocks_are_a_standard_config_gemma3_sliding_layers_included(tmp_path):
    """Whole blocks dropped: num_hidden_layers and layer_types shrink, plain transformers loads it exactly
    (rotary buffers the config no longer builds, e.g. of a dropped full-attention layer, are not weights)."""
    cls, method = _method_from_preset("block_drop", ("method.drop_n=1",))
    bundle = build("tiny-gemma3")
    compress(method, bundle, _calibration(bundle, FIXTURE_DATA_DIR))
    saved = save_pretrained(bundle, tmp_path / "dropped")
    config = json.loads((tmp_path / "dropped" / "config.json").read_text())
    assert saved.format == "hf" and config["num_hidden_layers"] == 2 and len(config["layer_types"]) == 2
    probe(bundle, tmp_path / "dropped")
    diffs = fresh_process(PLAIN_TRANSFORMERS, {"dropped": saved.path}, tmp_path)
    assert diffs == {"dropped": 0.0, "slimbench imported": False}
