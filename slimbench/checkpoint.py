"""Saved models: a Hugging Face directory that plain transformers loads wherever a standard
format can express the compressed model, and that ``load_pretrained`` always loads (no dense
model needed), with every tensor checksummed.

``save_pretrained(bundle, directory, record=None)`` compares the compressed model with the
architecture its config builds (on the meta device) and picks the weights' format:

* ``hf``: the model holds exactly the modules its config builds (dense; pruned zeros held in
  dense tensors; whole blocks dropped, ``num_hidden_layers`` lowered): ``model.safetensors``.
  compressed-tensors 0.20 has no sparse storage format any more (its bitmask formats are legacy
  and transformers cannot load them), so unstructured and 2:4 sparse weights are stored dense,
  exact zeros included; the model card states the measured sparsity.
* ``compressed-tensors``: the only changes are packed quantized linears (``QuantLinear``): their
  integer codes, scales and zero points in compressed-tensors' ``pack-quantized`` layout (weight
  only, 1..8 bits, per channel or per group; W4A16/W8A16) or ``int-quantized`` (W8A8: int8
  weights, dynamic per-token int8 activations), described by ``quantization_config`` in
  config.json (what transformers and vLLM read). The format needs groups that divide K, and
  transformers 5.x decompresses every dense layer with one scheme, so the layers of one bit width
  share one scheme: groups of the gcd of their groups and Ks, each scale repeated where that is
  finer than the layer's own groups (the same weights, exactly). SmolLM2 (K = 576 and 1536) with
  groups of 128 is written with groups of 64: 576 = 4·128 + 64 leaves a last group of 64.
  Asymmetric checkpoints carry ``"dequantize": true``: transformers 5.x cannot load
  compressed-tensors' asymmetric ``pack-quantized`` zero points into its compressed modules
  (llm-compressor issue 1618) but decompresses them correctly while loading. Layers of different
  bit widths with zero points (mixed precision) get one config group each: valid
  compressed-tensors, but transformers 5.x loads neither way (the card says so).
* ``slimbench``: any other change (sliced layers, low-rank factors, dropped sublayers, quantized
  factors, runtime hooks, a model that is not a transformers model): ``slimbench.safetensors``
  (transformers finds no weights it knows and refuses the directory) with every changed module
  described in slimbench.json.

Every directory also holds config.json, the tokenizer, generation_config.json, a model card
(README.md: method, configuration, record id, measured metrics) and ``slimbench.json``: the
format, the run, the description of every module that differs from the architecture, per-tensor
sha256 and the sha256 of its own content. ``load_pretrained`` checks all of it before it builds
the model, so a flipped byte, an edited bit width, group size or shape is a one-line
``CheckpointError``; the model it returns computes the same outputs as the saved one, bitwise
(``save_pretrained`` checks that on a probe input before it returns). Runtime methods' hooks are
installed again from their stage configs.

``load_compressed(model, directory)`` still reads the first format (``compressed.json``,
version 1) into a freshly loaded dense model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimbench.errors import CheckpointError
from slimbench.kernels.factored import FactoredLinear
from slimbench.kernels.packing import effective_group
from slimbench.kernels.qlinear import QuantLinear, expand_groups
from slimbench.kernels.skipped import SkippedAttention, SkippedMLP
from slimbench.model_card import model_card
from slimbench.models.adapters import adapter_for, get_path, set_path
from slimbench.models.bundle import ModelBundle, ModelSource
from slimbench.models.io import MODEL_IO

FORMAT, VERSION = "slimbench-checkpoint", 2
MANIFEST = "slimbench.json"
WEIGHTS = {"hf": "model.safetensors", "compressed-tensors": "model.safetensors", "slimbench": "slimbench.safetensors"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SavedModel:
    path: str
    format: str
    bytes: int  # every file of the directory
    weights_bytes: int
    verified: str

    def to_dict(self) -> dict:
        return asdict(self)


# -- module descriptions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleCodec:
    """How one module type is described in slimbench.json and rebuilt. ``export``: (description,
    portable tensors) for types whose in-memory tensors are machine-specific (packed int4);
    otherwise the module's tensors travel in the model's state dict and ``build`` makes it empty."""

    cls: type
    describe: Callable[[nn.Module], dict]
    build: Callable[[dict, dict[str, torch.Tensor], torch.dtype], nn.Module]
    export: Callable[[nn.Module], tuple[dict, dict[str, torch.Tensor]]] | None = None


def _linear_description(m: nn.Linear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _without_tensors(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "tensors"}  # slimbench.json lists every tensor once, in "tensors"


CODECS: dict[str, ModuleCodec] = {
    "quant": ModuleCodec(QuantLinear, lambda m: _without_tensors(m.export()[0]), lambda d, t, dtype: QuantLinear.from_export(d, t),
                         lambda m: m.export()),
    "factored": ModuleCodec(FactoredLinear, lambda m: _without_tensors(m.export()[0]),
                            lambda d, t, dtype: FactoredLinear(d["in_features"], d["out_features"], d["rank"], d["bias"], dtype=dtype)),
    "linear": ModuleCodec(nn.Linear, _linear_description,
                          lambda d, t, dtype: nn.Linear(d["in_features"], d["out_features"], bias=d["bias"], dtype=dtype)),
    "skipped-attention": ModuleCodec(SkippedAttention, lambda m: {}, lambda d, t, dtype: SkippedAttention()),
    "skipped-mlp": ModuleCodec(SkippedMLP, lambda m: {}, lambda d, t, dtype: SkippedMLP()),
    "identity": ModuleCodec(nn.Identity, lambda m: {}, lambda d, t, dtype: nn.Identity()),
}
_CODEC_OF = {codec.cls: name for name, codec in CODECS.items()}


def _direct_tensors(module: nn.Module) -> dict[str, tuple]:
    """Shapes of the tensors a module itself saves (parameters and persistent buffers: buffers
    derived from the config, like rotary frequencies, are rebuilt with the architecture)."""
    persistent = {k: v for k, v in module._buffers.items() if k not in module._non_persistent_buffers_set}
    return {k: tuple(v.shape) for k, v in [*module._parameters.items(), *persistent.items()] if v is not None}


def changed_modules(model: nn.Module, skeleton: nn.Module) -> dict[str, nn.Module]:
    """The outermost modules of ``model`` that differ from the architecture ``skeleton`` (type or
    tensor shapes); their children come with them."""
    reference = dict(skeleton.named_modules())
    changed: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{c}.") for c in changed):
            continue
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module) or _direct_tensors(ref) != _direct_tensors(module):
            if type(module) not in _CODEC_OF:
                raise CheckpointError(f"cannot save module {name!r}: slimbench has no description for {type(module).__name__}")
            changed[name] = module
    present = set(dict(model.named_modules()))
    lost = [n for n in reference if n not in present and not any(n.startswith(f"{c}.") for c in changed)]
    if lost:
        raise CheckpointError(f"cannot save the model: module {lost[0]!r} of its architecture is gone and nothing replaces it")
    return changed


# -- checksums -------------------------------------------------------------------------------------
def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _doc_sha256(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _tensor_table(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape), "sha256": tensor_sha256(v)}
            for k, v in sorted(tensors.items())}


# -- compressed-tensors ----------------------------------------------------------------------------
def _natural_group(m: QuantLinear) -> int:
    """The widest group compressed-tensors can write this layer's grid with: its own group where
    that divides K, else gcd(group, K) (each scale repeated; the same weights)."""
    k = m.in_features
    group = effective_group(k, m.group_size)
    return group if k % group == 0 else math.gcd(group, k)


def ct_groups(modules: dict[str, QuantLinear]) -> dict[str, tuple[str, int]]:
    """(strategy, group) per layer, one per class of layers with the same bits and activation
    scheme: per channel when every layer of the class is per row, else groups of the gcd of the
    layers' groups. One scheme per class, because transformers 5.x decompresses every dense layer
    with the first config group's scheme (mixed groups would not load)."""
    classes: dict[tuple, list[str]] = {}
    for name, m in modules.items():
        classes.setdefault((m.bits, m.layout == "w8a8"), []).append(name)
    out = {}
    for names in classes.values():
        groups = {n: _natural_group(modules[n]) for n in names}
        if all(g == modules[n].in_features for n, g in groups.items()):
            out.update({n: ("channel", g) for n, g in groups.items()})
        else:
            common = math.gcd(*groups.values())
            out.update({n: ("group", common) for n in names})
    return out


def _ct_grid(m: QuantLinear, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [N, K/group], zero point [N, K/group]) of the layer's grid written with ``group``."""
    s, z = m.column_qparams()  # [N, K]
    k = m.in_features
    cols = torch.arange(0, k, group)
    scale, zero = s[:, cols].contiguous(), z[:, cols].contiguous()
    if not (torch.equal(expand_groups(scale, k, group), s) and torch.equal(expand_groups(zero, k, group), z)):
        raise CheckpointError(f"a {m.bits}-bit layer's scales are not constant over groups of {group}: cannot write compressed-tensors")
    return scale, zero


def ct_export(m: QuantLinear, strategy: str, group: int, symmetric: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """(scheme, tensors named as compressed-tensors stores them) of one quantized linear."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    scale, zero = _ct_grid(m, group)
    w8a8 = m.layout == "w8a8"
    scheme = {"bits": m.bits, "strategy": strategy, "group_size": None if strategy == "channel" else group,
              "symmetric": symmetric or w8a8, "activations": "int8-dynamic-token" if w8a8 else None}
    if w8a8:  # int-quantized: signed int8 codes, symmetric per channel
        return scheme, _with_bias(m, {"weight": m.qweight.contiguous(), "weight_scale": scale.float()})
    half = 1 << (m.bits - 1)
    tensors = {"weight_packed": pack_to_int32((m.codes() - half).to(torch.int8), m.bits), "weight_scale": scale.float(),
               "weight_shape": torch.tensor([m.out_features, m.in_features])}
    if not symmetric:
        tensors["weight_zero_point"] = pack_to_int32((zero - half).to(torch.int8), m.bits, packed_dim=0)
    return scheme, _with_bias(m, tensors)


def _ct_notes(schemes: dict[str, dict]) -> list[str]:
    distinct = {json.dumps(x, sort_keys=True) for x in schemes.values()}
    if len(distinct) > 1 and not all(x["symmetric"] for x in schemes.values()):
        return ["transformers 5.x cannot load this checkpoint: it decompresses every dense layer with the first config "
                "group's scheme, and cannot load asymmetric zero points without decompressing; load it with "
                "slimbench.load_pretrained (or a compressed-tensors loader that applies each layer's scheme)"]
    return []


def _symmetric(modules: dict[str, QuantLinear], groups: dict[str, tuple[str, int]]) -> bool:
    """Every zero point at the middle code (2^(bits-1)): the grid needs no zero points."""
    return all(m.layout == "w8a8" or bool((_ct_grid(m, groups[n][1])[1] == 1 << (m.bits - 1)).all()) for n, m in modules.items())


def _with_bias(m: QuantLinear, tensors: dict) -> dict:
    return {**tensors, "bias": m.bias.detach()} if m.bias is not None else tensors


def ct_import(meta: dict, scheme: dict, tensors: dict[str, torch.Tensor], layout: str) -> QuantLinear:
    """The slimbench module (``meta``: its export description) back from compressed-tensors' tensors."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    n, k, bits = meta["out_features"], meta["in_features"], meta["bits"]
    _check_ct_tensors(n, k, bits, scheme, tensors)
    bias = tensors.get("bias")
    group = k if scheme["strategy"] == "channel" else scheme["group_size"]
    scale = tensors["weight_scale"]  # [N, G]
    if scheme["activations"]:
        return QuantLinear(k, n, 8, -1, "w8a8", {"qweight": tensors["weight"], "wscale": scale[:, 0].float().contiguous()}, bias)
    half = 1 << (bits - 1)
    codes = unpack_from_int32(tensors["weight_packed"], bits, (n, k)).to(torch.int32) + half  # [N, K]
    if scheme["symmetric"]:
        zero = torch.full(scale.shape, half, dtype=torch.int32)
    else:
        zero = unpack_from_int32(tensors["weight_zero_point"], bits, tuple(scale.shape), packed_dim=0).to(torch.int32) + half
    cols = torch.arange(0, k, effective_group(k, meta["group_size"]))  # the first column of each of the saved model's groups
    s, z = expand_groups(scale.float(), k, group)[:, cols], expand_groups(zero, k, group)[:, cols]
    return QuantLinear.from_codes(codes, s, z.float(), bits, meta["group_size"], bias=bias, layout=layout)


def _check_ct_tensors(n: int, k: int, bits: int, scheme: dict, tensors: dict[str, torch.Tensor]) -> None:
    """The tensors compressed-tensors stores for this scheme, with the shapes it implies."""
    group = k if scheme["strategy"] == "channel" else scheme["group_size"]
    if not group or k % group:
        raise ValueError(f"group size {group} does not divide K={k}")
    g = k // group
    if scheme["activations"]:
        shapes = {"weight": (n, k), "weight_scale": (n, 1)}
    else:
        shapes = {"weight_packed": (n, math.ceil(k * bits / 32)), "weight_scale": (n, g), "weight_shape": (2,)}
        if not scheme["symmetric"]:
            shapes["weight_zero_point"] = (math.ceil(n * bits / 32), g)
    if "bias" in tensors:
        shapes["bias"] = (n,)
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != shapes:
        raise ValueError(f"{bits}-bit {scheme['strategy']} codes of [{n}, {k}] (group {group}) are stored as {shapes}, found {found}")
    if "weight_shape" in tensors and tensors["weight_shape"].tolist() != [n, k]:
        raise ValueError(f"weight_shape is {tensors['weight_shape'].tolist()}, the layer is [{n}, {k}]")


def ct_quantization_config(schemes: dict[str, dict], unquantized: list[str]) -> Any:
    """compressed-tensors' ``QuantizationConfig``: one config group per distinct scheme."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    distinct: list[dict] = []
    for scheme in schemes.values():
        if scheme not in distinct:
            distinct.append(scheme)
    groups = {}
    for i, scheme in enumerate(distinct):
        weights = QuantizationArgs(num_bits=scheme["bits"], type="int", symmetric=scheme["symmetric"], strategy=scheme["strategy"],
                                   group_size=scheme["group_size"])
        acts = None if not scheme["activations"] else QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        targets = ["Linear"] if len(distinct) == 1 else [n for n, s in schemes.items() if s == scheme]
        fmt = "int-quantized" if acts is not None else "pack-quantized"
        groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=weights, input_activations=acts,
                                                  format=fmt if len(distinct) > 1 else None)
    formats = {("int-quantized" if s["activations"] else "pack-quantized") for s in distinct}
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    return QuantizationConfig(config_groups=groups, format=fmt, ignore=sorted(unquantized), quantization_status="compressed")


def _write_ct_config(directory: Path, schemes: dict[str, dict], unquantized: list[str]) -> dict:
    from compressed_tensors.compressors import ModelCompressor

    ModelCompressor(quantization_config=ct_quantization_config(schemes, unquantized)).update_config(str(directory))
    config = json.loads((directory / "config.json").read_text())
    if not all(s["symmetric"] for s in schemes.values()):
        # transformers 5.x loads asymmetric zero points only while decompressing (llm-compressor issue 1618)
        config["quantization_config"]["dequantize"] = True
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config["quantization_config"]


# -- saving ----------------------------------------------------------------------------------------
def save_pretrained(bundle: ModelBundle, directory: str | os.PathLike, record: Any = None, stages: list[dict] | None = None,
                    verify: bool = True) -> SavedModel:
    """Write the model as a Hugging Face directory (see the module docstring); returns what was written.

    ``record``: the run's ``RunRecord`` (method, metrics and record id go into the model card);
    ``stages``: the applied methods as ``[{"name", "config"}]`` when there is no record (runtime
    methods are installed again from them at load)."""
    directory = Path(directory)
    model, io = bundle.model, bundle.io
    skeleton = _architecture(io, bundle.adapter, model.config, next(model.parameters()).dtype, device="meta")
    changed = changed_modules(model, skeleton)
    stages = record.stages if record is not None else (stages or [])
    runtime = _runtime_stages(bundle, stages)
    fmt = "slimbench" if bundle.adapter.moe is not None else _choose_format(io, changed, runtime, skeleton)
    tensors, modules, aliases, extra = _collect(bundle, changed, fmt)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS[fmt]), metadata={"format": "pt"})
        io.write_config(model, tmp)
        if fmt == "compressed-tensors":
            extra["quantization_config"] = _write_ct_config(tmp, extra.pop("schemes_by_module"), extra.pop("unquantized"))
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(tmp)
        doc = _manifest(bundle, fmt, modules, aliases, tensors, runtime, record, stages, extra)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(model_card(doc, record, _files(tmp), path=str(directory)))
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    verified = _verify_reload(bundle, directory) if verify else "not verified"
    files = _files(directory)
    return SavedModel(str(directory), fmt, sum(files.values()), files[WEIGHTS[fmt]], verified)


def _architecture(io: Any, adapter: Any, config: Any, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """The architecture as slimbench loads it: a trained MoE's fused experts unfused (one linear
    triple per expert, ``slimbench.moe.models.unfuse_experts``). Such a model is saved in the
    slimbench format (its unfused expert tensors are not the transformers layout)."""
    model = io.architecture(config, dtype, device=device)
    if adapter.moe is not None and adapter.moe.trained:
        from slimbench.moe.models import unfuse_experts

        unfuse_experts(model, adapter)
    return model


def _choose_format(io: Any, changed: dict[str, nn.Module], runtime: list[dict], skeleton: nn.Module) -> str:
    if not io.standard_format or runtime:
        return "slimbench"
    if not changed:
        return "hf"
    reference = dict(skeleton.named_modules())
    return "compressed-tensors" if all(_replaces_a_linear(m, reference.get(n)) for n, m in changed.items()) else "slimbench"


def _replaces_a_linear(module: nn.Module, ref: nn.Module | None) -> bool:
    """A packed linear where the architecture has a linear of the same shape and bias."""
    return (type(module) is QuantLinear and type(ref) is nn.Linear and (ref.in_features, ref.out_features) ==
            (module.in_features, module.out_features) and (ref.bias is None) == (module.bias is None))


def _runtime_stages(bundle: ModelBundle, stages: list[dict]) -> list[dict]:
    """The runtime stages to install again at load (their hooks are not weights)."""
    if not bundle.hooks.names():
        return []
    from slimbench.methods import METHODS

    runtime = [s for s in stages if METHODS.get(s["name"]).sort == "runtime"]
    if not runtime:
        raise CheckpointError("the model has runtime hooks but no record of the runtime method that installed them: cannot save it")
    return [{"name": s["name"], "config": s.get("config") or {}} for s in runtime]


def _collect(bundle: ModelBundle, changed: dict[str, nn.Module], fmt: str) -> tuple[dict, dict, dict, dict]:
    """(tensors to write, module descriptions, aliases, format extras)."""
    model, adapter = bundle.model, bundle.adapter
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    extra: dict = {}
    portable: dict[str, nn.Module] = {}
    for name, module in changed.items():
        codec_name = _CODEC_OF[type(module)]
        codec = CODECS[codec_name]
        modules[name] = {"type": codec_name, **codec.describe(module)}
        if codec.export is not None:
            portable[name] = module
    if fmt == "compressed-tensors":
        schemes = {}
        groups = ct_groups(portable)
        symmetric = _symmetric(portable, groups)
        for name, module in portable.items():
            schemes[name], parts = ct_export(module, *groups[name], symmetric=symmetric)
            modules[name]["ct_scheme"] = schemes[name]
            tensors.update({f"{name}.{k}": v for k, v in parts.items()})
        linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        extra.update(schemes_by_module=schemes, unquantized=linears, notes=_ct_notes(schemes))
    else:
        for name, module in portable.items():
            tensors.update({f"{name}.{k}": v for k, v in CODECS[modules[name]["type"]].export(module)[1].items()})
    aliases = _plain_tensors(model, adapter, set(portable), fmt, tensors)
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, modules, aliases, extra


def _plain_tensors(model: nn.Module, adapter: Any, portable: set[str], fmt: str, tensors: dict) -> dict[str, str]:
    """Every other state-dict tensor, each storage once: a tensor sharing another's storage is
    an alias (tied embeddings; transformers ties them again from the config; slimbench's format
    lists them), except where a standard format cannot express the tie (then it is written twice)."""
    inside = tuple(f"{p}." for p in portable)
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    tied_by_config = (f"{adapter.lm_head}.weight", f"{adapter.embed}.weight") if adapter.tied_embeddings(model) else None
    for key, value in model.state_dict().items():
        if value is None or (inside and key.startswith(inside)):
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        first = seen.setdefault(ident, key)
        if first == key:
            tensors[key] = value
        elif fmt == "slimbench" or (key, first) == tied_by_config:
            aliases[key] = first
        else:  # a tie the standard format cannot express: written twice
            tensors[key] = value.clone()
    return aliases


def _manifest(bundle: ModelBundle, fmt: str, modules: dict, aliases: dict, tensors: dict, runtime: list, record: Any,
              stages: list[dict], extra: dict) -> dict:
    model = bundle.model
    doc = {
        "format": FORMAT, "version": VERSION, "weights_format": fmt, "weights_file": WEIGHTS[fmt],
        "io": bundle.adapter.io, "model_type": bundle.source.model_type, "kind": bundle.kind,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": next(model.parameters()).device.type,
        "source": bundle.source.to_dict(),
        "run": None if record is None else {"run_id": record.run_id, "attempt_id": record.attempt_id, "method": record.method},
        "stages": [{"name": s["name"], "config": s.get("config") or {}} for s in stages],
        "modules": modules, "aliases": aliases, "runtime_stages": runtime, "tensors": _tensor_table(tensors),
        **({"quantization_config": extra["quantization_config"]} if "quantization_config" in extra else {}),
        "notes": extra.get("notes", []),
    }
    doc["sha256"] = _doc_sha256(doc)
    return doc


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def _replace_dir(tmp: Path, directory: Path) -> None:
    """Put the finished directory in place (an earlier save of the same run is replaced)."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}-old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _verify_reload(bundle: ModelBundle, directory: Path) -> str:
    """Load the directory back and compare outputs on a probe input: they must be identical."""
    reloaded = load_pretrained(directory, device=next(bundle.model.parameters()).device)
    io = bundle.io
    sample = io.example_inputs(bundle.model, 2, 16, torch.Generator().manual_seed(0))
    outputs = []
    for model in (bundle.model, reloaded):
        from slimbench.hooks import HookRegistry

        HookRegistry.of(model).reset_state()
        with torch.no_grad():
            outputs.append(io.forward(model, sample))
    if not torch.equal(*outputs):
        diff = float((outputs[0].float() - outputs[1].float()).abs().max())
        raise CheckpointError(f"{directory}: the reloaded model's outputs differ from the saved model's (max |Δ| {diff:.3g})")
    return "reloaded with load_pretrained: identical outputs on a probe input"


# -- loading ---------------------------------------------------------------------------------------
def read_manifest(directory: str | os.PathLike) -> dict:
    """slimbench.json, checked against its own sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        hint = ("an old slimbench checkpoint (compressed.json): load it with slimbench.checkpoint.load_compressed(model, dir)"
                if (directory / "compressed.json").is_file() else "not a slimbench checkpoint")
        raise CheckpointError(f"{directory}: no {MANIFEST} ({hint})")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {doc.get('format')!r} v{doc.get('version')}, expected {FORMAT} v{VERSION}")
    if doc.get("sha256") != _doc_sha256(doc):
        raise CheckpointError(f"{path}: its content does not match its sha256 (edited after saving?)")
    return doc


def verified_tensors(directory: Path, doc: dict) -> dict[str, torch.Tensor]:
    """The weights file's tensors, each checked against slimbench.json (names, dtypes, shapes, sha256)."""
    path = directory / doc["weights_file"]
    if not path.is_file():
        raise CheckpointError(f"{directory}: {doc['weights_file']} is missing")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # a truncated or overwritten file
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    expected = doc["tensors"]
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise CheckpointError(f"{path}: tensors differ from {MANIFEST} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, info in expected.items():
        t = tensors[name]
        if str(t.dtype).removeprefix("torch.") != info["dtype"] or list(t.shape) != info["shape"]:
            raise CheckpointError(f"{path}: tensor {name!r} is {t.dtype} {list(t.shape)}, {MANIFEST} says {info['dtype']} {info['shape']}")
        if tensor_sha256(t) != info["sha256"]:
            raise CheckpointError(f"{path}: tensor {name!r} fails its sha256 check (the file was modified or corrupted)")
    return tensors


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The saved compressed model, ready to run (no dense model needed); see the module docstring."""
    return load_bundle(directory, device=device).model


def load_bundle(directory: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """The saved model as a ModelBundle (model, tokenizer, adapter, source)."""
    directory = Path(directory)
    doc = read_manifest(directory)
    tensors = verified_tensors(directory, doc)
    io = MODEL_IO.get(doc["io"])
    if "quantization_config" in doc:
        _check_ct_config(directory, doc)
    config = io.read_config(directory)
    dtype = DTYPES[doc["dtype"]]
    model = _architecture(io, adapter_for(doc["model_type"]), config, dtype)
    _build_modules(model, doc, tensors, dtype)
    _load_tensors(model, doc, tensors, directory)
    device = torch.device(device)
    model = model.to(device).eval()
    if device.type != doc["device"]:
        _relayout(model, device)
    source = ModelSource(name=doc["source"]["name"], kind=doc["kind"], loader="saved", model_type=doc["model_type"],
                         identity={"path": str(directory.resolve()), "manifest_sha256": doc["sha256"]}, dtype=doc["dtype"])
    bundle = ModelBundle(model=model, tokenizer=_tokenizer(directory), kind=doc["kind"], adapter=adapter_for(doc["model_type"]), source=source)
    _install_runtime(bundle, doc["runtime_stages"])
    return bundle


def _check_ct_config(directory: Path, doc: dict) -> None:
    config = json.loads((directory / "config.json").read_text())
    if config.get("quantization_config") != doc["quantization_config"]:
        raise CheckpointError(f"{directory / 'config.json'}: quantization_config differs from the one saved in {MANIFEST} (edited?)")


def _build_modules(model: nn.Module, doc: dict, tensors: dict, dtype: torch.dtype) -> None:
    """Replace every module the manifest describes, outermost first; exported modules take their tensors."""
    for name in sorted(doc["modules"], key=lambda n: n.count(".")):
        desc = dict(doc["modules"][name])
        codec = CODECS.get(desc.pop("type", None))
        if codec is None:
            raise CheckpointError(f"{MANIFEST}: module {name!r} has an unknown type")
        if get_path(model, name.rpartition(".")[0]) is None and "." in name:
            raise CheckpointError(f"{MANIFEST}: module {name!r} does not fit the architecture in config.json")
        prefix = f"{name}."
        own = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]} if codec.export else {}
        try:
            module = _build_one(codec, desc, own, dtype)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"module {name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        set_path(model, name, module)


def _build_one(codec: ModuleCodec, desc: dict, own: dict, dtype: torch.dtype) -> nn.Module:
    scheme = desc.pop("ct_scheme", None)
    if scheme is not None:
        return ct_import(desc, scheme, own, desc["layout"])
    return codec.build(desc, own, dtype)


def _relayout(model: nn.Module, device: torch.device) -> None:
    """Quantized linears saved on another device type: re-packed for this device's kernels."""
    for name, m in list(model.named_modules()):
        if type(m) is QuantLinear and m.layout != "w8a8":
            s, z = m.column_qparams()
            cols = torch.arange(0, m.in_features, effective_group(m.in_features, m.group_size))
            new = QuantLinear.from_codes(m.codes().to(device), s[:, cols].to(device), z[:, cols].float().to(device), m.bits,
                                         m.group_size, bias=m.bias, layout="auto")
            set_path(model, name, new)


def _load_tensors(model: nn.Module, doc: dict, tensors: dict, directory: Path) -> None:
    """Every remaining tensor into the model, strictly; shapes checked first (one-line errors)."""
    for alias, target in doc["aliases"].items():
        tensors[alias] = tensors[target]
    exported = tuple(f"{n}." for n, d in doc["modules"].items() if CODECS[d["type"]].export is not None)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(exported)}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in expected.items():
        if value.shape != tensors[key].shape:
            raise CheckpointError(f"{directory}: tensor {key!r} is {list(tensors[key].shape)}, the architecture needs {list(value.shape)}")
    model.load_state_dict(tensors, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, target in doc["aliases"].items():
        if alias in params and target in params and params[alias] is not params[target]:
            raise CheckpointError(f"{directory}: {alias} is saved as a tie of {target} but the architecture does not tie them")


def _tokenizer(directory: Path) -> Any:
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def _install_runtime(bundle: ModelBundle, stages: list[dict]) -> None:
    """Runtime methods' hooks, installed again from their configs (they need no calibration)."""
    if not stages:
        return
    from slimbench.configs import build_dataclass
    from slimbench.methods import METHODS

    for stage in stages:
        cls = METHODS.get(stage["name"])
        if cls.requires_calibration:
            raise CheckpointError(f"runtime method {stage['name']!r} needs calibration data to install its hooks: "
                                  "apply it to the loaded model with slimbench.compress")
        cls(build_dataclass(cls.Config, stage["config"], owner=stage["name"])).apply(bundle, None)


# -- the first format (compressed.json, version 1), read only ----------------------------------------
LEGACY_FORMAT, LEGACY_VERSION = "slimbench-compressed", 1
LEGACY_TYPES: dict[str, type] = {"quant": QuantLinear, "factored": FactoredLinear}


def load_compressed(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Rebuild a version-1 checkpoint (``compressed.json``) inside ``model`` (same architecture, dense weights)."""
    directory = Path(directory)
    doc = json.loads((directory / "compressed.json").read_text())
    if doc.get("format") != LEGACY_FORMAT or doc.get("version") != LEGACY_VERSION:
        raise CheckpointError(f"{directory} is not a {LEGACY_FORMAT} v{LEGACY_VERSION} checkpoint")
    tensors = load_file(str(directory / "model.safetensors"))
    for name, info in doc["modules"].items():
        prefix = f"{name}."
        parts = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] in info["tensors"]}
        try:
            set_path(model, name, LEGACY_TYPES[info.get("type", "quant")].from_export(info, parts))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"module {name!r}: {exc}") from None
        for k in parts:
            del tensors[prefix + k]
    for alias, target in doc["aliases"].items():
        tensors[alias] = tensors[target]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    packed_keys = {k for k in missing if any(k.startswith(f"{n}.") for n in doc["modules"])}
    if set(missing) - packed_keys or unexpected:
        raise CheckpointError(f"checkpoint does not match the model: missing {sorted(set(missing) - packed_keys)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model


__all__ = ["CheckpointError", "SavedModel", "load_bundle", "load_compressed", "load_pretrained", "read_manifest", "save_pretrained"]
