"""What slimbench holds, described from its own sources: the registries (methods, evaluators,
loaders), the config presets (``conf/`` and every plugin's), and each config dataclass's declared
parameters (``slimbench.params``). ``slimbench methods`` / ``evaluators`` / ``models`` print it."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from slimbench.errors import ConfigError
from slimbench.params import describe

# what a model's layers become, as the execution path a method that produces them reports
FORM_PATHS = {
    "masked": "masked-dense", "sliced": "sliced-dense", "dropped": "dropped-modules", "factored": "low-rank",
    "quantized": "int8/int4 kernel (simulated where none fits)", "hooked": "runtime hooks",
}


def module_summary(obj: type) -> str:
    """The first paragraph of the docstring of the module defining ``obj``, on one line."""
    doc = sys.modules[obj.__module__].__doc__ or obj.__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def params(config_cls: type) -> list[dict]:
    return [asdict(p) for p in describe(config_cls)]


def _lookup(registry, name: str):
    try:
        return registry.get(name)
    except KeyError as exc:
        raise ConfigError(str(exc)) from None


# -- methods ---------------------------------------------------------------------------------------
def methods(name: str | None = None) -> list[dict]:
    from slimbench.methods import METHODS

    items = [(name, _lookup(METHODS, name))] if name else METHODS.items()
    return [_method_info(n, cls) for n, cls in items]


def _method_info(name: str, cls: type) -> dict:
    produced = sorted(cls.produces - {"dense"})
    return {
        "name": name, "family": cls.family, "sort": cls.sort, "summary": cls.summary(),
        "calibration": cls.requires_calibration, "kinds": list(cls.kinds),
        "execution_path": " + ".join(FORM_PATHS[f] for f in produced) or "dense",
        "produces": produced, "accepts": sorted(cls.accepts), "module": cls.__module__,
        "params": params(cls.Config),
    }


# -- evaluators ------------------------------------------------------------------------------------
def evaluators(name: str | None = None) -> list[dict]:
    from slimbench.evaluation import EVALUATORS

    items = [(name, _lookup(EVALUATORS, name))] if name else EVALUATORS.items()
    return [{"name": n, "version": cls.version, "kinds": list(cls.kinds), "machine_dependent": bool(getattr(cls, "machine_dependent", False)),
             "summary": module_summary(cls), "module": cls.__module__, "params": params(cls.Config)} for n, cls in items]


# -- models (presets) --------------------------------------------------------------------------------
def model_presets() -> dict[str, Path]:
    """Preset name -> its YAML (slimbench's and every plugin's ``conf/model``)."""
    from slimbench.plugins import conf_roots

    presets: dict[str, Path] = {}
    for root in conf_roots():
        for path in sorted((root / "model").glob("*.yaml")):
            presets.setdefault(path.stem, path)
    return presets


def models(name: str | None = None) -> list[dict]:
    from omegaconf import OmegaConf

    from slimbench.models.loaders import LOADERS

    presets = model_presets()
    if name is not None and name not in presets:
        import difflib

        close = difflib.get_close_matches(name, list(presets), n=1)
        raise ConfigError(f"unknown model {name!r} (available: {', '.join(presets)})" + (f"; did you mean {close[0]!r}?" if close else ""))
    out = []
    for preset, path in presets.items():
        if name is not None and preset != name:
            continue
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        loader = node.get("loader", "hf")
        out.append({
            "name": preset, "kind": node.get("kind", "causal_lm"), "loader": loader, "family": node.get("family", ""),
            "dtype": node.get("dtype", "float32"), "summary": _yaml_comment(path), "preset": str(path),
            "values": {k: v for k, v in node.items() if k != "defaults"},
            "params": params(_lookup(LOADERS, loader).Config),
        })
    return out


def _yaml_comment(path: Path) -> str:
    """The leading comment block of a preset, on one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


# -- text ------------------------------------------------------------------------------------------
def _short(text: str, width: int = 96) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from slimbench.leaderboard.tables import markdown_table

    return markdown_table(headers, rows)


def params_table(items: list[dict]) -> str:
    if not items:
        return "(no parameters)"
    from slimbench.params import show

    rows = [[p["name"], p["type"], show(p["default"]), p["valid"] or "-", p["doc"] or "-"] for p in items]
    return _table(["parameter", "type", "default", "valid", "meaning"], rows)


def methods_text(name: str | None = None) -> str:
    infos = methods(name)
    if name:
        m = infos[0]
        head = (f"## {m['name']} ({m['family']}, {m['sort']} method)\n\n{m['summary']}\n\n"
                f"- calibration: {'yes' if m['calibration'] else 'no'}\n- model kinds: {', '.join(m['kinds'])}\n"
                f"- execution path: {m['execution_path']}\n- produces: {', '.join(m['produces']) or 'dense'}; works on: "
                f"{', '.join(m['accepts'])}\n- code: {m['module']}\n\nOverride with `method={m['name']} method.<parameter>=<value>`.\n\n")
        return head + params_table(m["params"])
    rows = [[m["name"], m["family"], "yes" if m["calibration"] else "no", m["execution_path"], ", ".join(m["produces"]) or "-",
             _short(m["summary"])] for m in infos]
    return _table(["method", "family", "calibration", "execution path", "produces", "summary"], rows) + \
        "\n\n`slimbench methods <name>` shows a method's parameters, types, defaults and valid values."


def evaluators_text(name: str | None = None) -> str:
    infos = evaluators(name)
    if name:
        e = infos[0]
        return (f"## {e['name']} (version {e['version']})\n\n{e['summary']}\n\n- model kinds: {', '.join(e['kinds'])}\n"
                f"- machine-dependent protocol: {'yes' if e['machine_dependent'] else 'no'}\n- code: {e['module']}\n\n"
                f"Override with `eval.evaluators.{e['name']}.<parameter>=<value>`.\n\n" + params_table(e["params"]))
    rows = [[e["name"], e["version"], ", ".join(e["kinds"]), _short(e["summary"])] for e in infos]
    return _table(["evaluator", "version", "kinds", "summary"], rows) + "\n\n`slimbench evaluators <name>` shows its parameters."


def models_text(name: str | None = None) -> str:
    infos = models(name)
    if name:
        m = infos[0]
        values = "\n".join(f"- {k}: {v}" for k, v in m["values"].items())
        return (f"## {m['name']} ({m['kind']}, loader {m['loader']})\n\n{m['summary']}\n\nPreset ({m['preset']}):\n\n{values}\n\n"
                f"Parameters of loader {m['loader']!r} (`model.<parameter>=<value>`):\n\n" + params_table(m["params"]))
    rows = [[m["name"], m["kind"], m["loader"], m["family"] or "-", _short(m["summary"])] for m in infos]
    return _table(["model", "kind", "loader", "family", "summary"], rows) + "\n\n`slimbench models <name>` shows the preset and its loader's parameters."
