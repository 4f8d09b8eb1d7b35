"""The model card (README.md) of a saved model: what it is, how to load it, how it was made and
what was measured (from the run's record), and how its weights are stored."""

from __future__ import annotations

from typing import Any

LOAD_HF = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}"){extra}
tokenizer = AutoTokenizer.from_pretrained("{path}")
```"""
LOAD_SLIMBENCH = """```python
import slimbench

model = slimbench.load_pretrained("{path}")  # no dense model needed; every tensor's sha256 is checked
```"""
FORMAT_NOTES = {
    "hf": "Standard transformers checkpoint (the modules its config builds). Pruned weights are stored dense with "
          "their exact zeros: compressed-tensors 0.20 has no sparse storage format that transformers loads.",
    "compressed-tensors": "compressed-tensors checkpoint (`quantization_config` in config.json): packed integer codes, "
                          "scales and zero points. transformers decompresses the weights while loading (runs dense); "
                          "`slimbench.load_pretrained` rebuilds slimbench's packed modules and kernels instead.",
    "slimbench": "slimbench's format: the model's shape differs from what a standard config can express (or it holds "
                 "runtime hooks), so the weights are in `slimbench.safetensors` and every changed module is described "
                 "in `slimbench.json`; plain transformers refuses the directory (no `model.safetensors`).",
}


def model_card(doc: dict, record: Any, files: dict[str, int], path: str) -> str:
    sections = [_front_matter(doc), _title(doc, record), _load(doc, path), _method(doc["stages"]), _compression(record),
                _metrics(record), _format(doc, files)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _front_matter(doc: dict) -> str:
    methods = [s["name"] for s in doc.get("stages", [])]
    tags = ["slimbench", *methods] + (["compressed-tensors"] if doc["weights_format"] == "compressed-tensors" else [])
    library = "slimbench" if doc["weights_format"] == "slimbench" else "transformers"
    return "---\nlibrary_name: " + library + "\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---"


def _title(doc: dict, record: Any) -> str:
    source = doc["source"]
    name = source.get("name", "model")
    method = "+".join(s["name"] for s in doc.get("stages", [])) or "compressed"
    origin = source.get("upstream") or source.get("id") or source.get("path") or source.get("loader")
    lines = [f"# {name} · {method} (slimbench)", "", f"`{name}` ({origin}) compressed with slimbench."]
    if record is not None:
        lines.append(f"Record: run `{record.run_id}`, attempt `{record.attempt_id}`.")
        for error in record.evaluator_errors:
            lines.append(f"Evaluator `{error['evaluator']}` failed: {error['type']}: {error['message']}")
    return "\n".join(lines)


def _load(doc: dict, path: str) -> str:
    fmt = doc["weights_format"]
    parts = ["## Load"]
    if fmt != "slimbench" and doc["kind"] == "causal_lm":
        extra = "  # needs the compressed-tensors package" if fmt == "compressed-tensors" else ""
        parts += [LOAD_HF.format(path=path, extra=extra), "With slimbench (same outputs as the model that was measured):"]
    parts.append(LOAD_SLIMBENCH.format(path=path))
    return "\n\n".join(parts)


def _method(stages: list[dict]) -> str:
    if not stages:
        return ""
    from slimbench.methods import METHODS

    rows = []
    for i, stage in enumerate(stages):
        cls = METHODS.get(stage["name"]) if stage["name"] in METHODS else None
        params = ", ".join(f"{k}={v}" for k, v in sorted((stage.get("config") or {}).items())) or "-"
        rows.append(f"| {i} | `{stage['name']}` | {cls.family if cls else '?'} | {cls.summary() if cls else ''} | {params} |")
    head = "| stage | method | family | summary | parameters |\n|---|---|---|---|---|"
    return "## Method\n\n" + head + "\n" + "\n".join(rows)


def _compression(record: Any) -> str:
    comp = getattr(record, "compression", None)
    if comp is None:
        return ""
    def mib(b):
        return "-" if b is None else f"{b / 2**20:.1f} MiB"
    rows = [("parameters", f"{comp.params_before:,} → {comp.params_after:,}" if comp.params_before else "-"),
            ("bytes", f"{mib(comp.bytes_before)} → {mib(comp.bytes_after)}"),
            ("bits per weight (block linears)", f"{_num(comp.bits_per_weight_before)} → {_num(comp.bits_per_weight_after)}"),
            ("sparsity (block linears, measured)", "-" if comp.sparsity is None else f"{comp.sparsity:.4f}"),
            ("execution path", f"`{comp.execution_path}`")]
    cal = comp.calibration or {}
    if cal:
        rows.append(("calibration", ", ".join(f"{k}={v}" for k, v in sorted(cal.items()) if not isinstance(v, dict))))
    return "## Compression\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _metrics(record: Any) -> str:
    if record is None or not record.metrics:
        return "## Measured\n\nNo evaluation was recorded for this model."
    rows = []
    for m in record.metrics:
        value = "-" if m.value is None else f"{m.value:.6g}"
        stderr = "" if m.stderr is None else f"± {m.stderr:.3g}"
        rows.append(f"| {m.evaluator}.{m.name} | {value} | {stderr} | {m.unit} |")
    fingerprints = ", ".join(f"{n}: `{p.get('fingerprint')}`" for n, p in record.protocols.items())
    return ("## Measured\n\nMeasured by slimbench on the compressed model in memory before saving (the saved directory "
            f"reloads to identical outputs). Protocol fingerprints: {fingerprints or '-'}.\n\n"
            "| metric | value | stderr | unit |\n|---|---|---|---|\n" + "\n".join(rows))


def _format(doc: dict, files: dict[str, int]) -> str:
    lines = ["## Format", "", FORMAT_NOTES[doc["weights_format"]]]
    schemes = {}
    for name, module in doc["modules"].items():
        if "ct_scheme" in module:
            s = module["ct_scheme"]
            key = (s["bits"], s["strategy"], s["group_size"], s["symmetric"], s["activations"], module["group_size"])
            schemes.setdefault(key, []).append(name)
    for (bits, strategy, group, symmetric, acts, saved_group), names in sorted(schemes.items(), key=str):
        kind = "W8A8 (dynamic per-token int8 activations)" if acts else f"W{bits}A16"
        grid = "per channel" if strategy == "channel" else f"groups of {group}"
        note = (f" (quantized with groups of {saved_group}, which do not divide these layers' K: each scale is written "
                f"once per {group} columns it covers; the same weights)") if strategy == "group" and saved_group > 0 and saved_group != group else ""
        lines.append(f"- {kind}, {'symmetric' if symmetric else 'asymmetric (zero points)'}, {grid}{note}: {len(names)} layers")
    lines += [f"- **Note:** {n}" for n in doc.get("notes", [])]
    lines += ["", "| file | bytes |", "|---|---|"] + [f"| {n} | {b:,} |" for n, b in files.items()]
    return "\n".join(lines)
