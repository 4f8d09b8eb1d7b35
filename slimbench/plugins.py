"""Third-party plugins: installed packages that register methods, evaluators, model loaders or
architecture adapters through entry points, and bring their own config presets.

Entry-point groups (``ENTRY_POINT_GROUPS``): ``slimbench.methods``, ``slimbench.evaluators``,
``slimbench.loaders``, ``slimbench.adapters``; each entry point names a module that registers its
objects on import (or an object, registered under the entry point's name). A plugin package's
presets live in ``<package>/conf/<group>/<name>.yaml`` (``conf/method/my_method.yaml``, ...):
slimbench adds every such directory to Hydra's search path (the ``SearchPathPlugin`` in
``hydra_plugins/slimbench_plugins``), and the command's pre-flight (did-you-mean), ``slimbench
methods`` and the Python API read them too, so no ``hydra.searchpath`` is needed.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ENTRY_POINT_GROUPS = ("slimbench.methods", "slimbench.evaluators", "slimbench.loaders", "slimbench.adapters")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@lru_cache(maxsize=1)
def plugin_packages() -> tuple[str, ...]:
    """Top-level packages of every slimbench entry point installed (not imported)."""
    names = set()
    for group in ENTRY_POINT_GROUPS:
        for ep in metadata.entry_points(group=group):
            names.add(ep.value.split(":")[0].split(".")[0])
    return tuple(sorted(names))


@lru_cache(maxsize=1)
def plugin_conf_dirs() -> tuple[tuple[str, Path], ...]:
    """(package, its conf directory) for every plugin package that has one."""
    out = []
    for package in plugin_packages():
        spec = importlib.util.find_spec(package)  # locates the package without executing it
        for location in (spec.submodule_search_locations or []) if spec else []:
            conf = Path(location) / "conf"
            if conf.is_dir():
                out.append((package, conf))
                break
    return tuple(out)


def conf_roots() -> list[Path]:
    """slimbench's config tree first, then every plugin's."""
    return [CONF_DIR, *(conf for _, conf in plugin_conf_dirs())]


def search_path_entries() -> list[str]:
    """Hydra search-path entries of the plugins' config directories (``pkg://<package>/conf``)."""
    return [f"pkg://{package}/conf" for package, _ in plugin_conf_dirs()]


def is_slimbench_config(path: str) -> bool:
    """Whether a Hydra search-path entry is slimbench's own config tree (the plugin acts only for slimbench)."""
    raw = str(path).removeprefix("file://")
    try:
        return Path(raw).resolve() == CONF_DIR.resolve()
    except OSError:
        return False
