"""A third-party plugin package, installed with pip into a temporary site dir, contributes a method,
an evaluator and their presets through entry points alone: ``slimbench methods`` lists the method,
a misspelling gets did-you-mean, and a run uses both with no ``hydra.searchpath``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from slimbench.store import ResultStore
from tests.conftest import REPO

PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "slimbench-toyplugin"
        version = "0.1.0"

        [project.entry-points."slimbench.methods"]
        toy_scale = "slimbench_toyplugin.method"

        [project.entry-points."slimbench.evaluators"]
        toy_norm = "slimbench_toyplugin.evaluator"

        [tool.setuptools]
        packages = ["slimbench_toyplugin"]

        [tool.setuptools.package-data]
        slimbench_toyplugin = ["conf/*/*.yaml"]
    """,
    "slimbench_toyplugin/__init__.py": '"""A slimbench plugin for the tests."""\n',
    "slimbench_toyplugin/method.py": '''
        """Toy scaling: every block linear's weight times a factor (a plugin method for the tests)."""

        from dataclasses import dataclass

        import torch

        from slimbench.methods import LayerReport, MethodBase, MethodResult, register_method
        from slimbench.params import check_params, param


        @dataclass(frozen=True)
        class ToyScaleConfig:
            factor: float = param(0.5, "what every weight is multiplied by", gt=0)

            def __post_init__(self) -> None:
                check_params(self)


        @register_method("toy_scale", config=ToyScaleConfig, family="test", produces="dense")
        class ToyScale(MethodBase):
            @torch.no_grad()
            def apply(self, bundle, calib) -> MethodResult:
                layers = []
                for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
                    for role, module in bundle.adapter.block_linears(block).items():
                        bundle.adapter.weight_matrix(module).mul_(self.config.factor)
                        layers.append(LayerReport(bundle.adapter.layer_name(i, role), role, "pruned"))
                return MethodResult("dense", layers=layers)
    ''',
    "slimbench_toyplugin/evaluator.py": '''
        """Toy norm: the mean absolute weight of the block linears (a plugin evaluator for the tests)."""

        from dataclasses import dataclass

        from slimbench.evaluation.base import EVALUATORS, EvalResult, Metric


        @dataclass(frozen=True)
        class ToyNormConfig:
            pass


        @EVALUATORS.register("toy_norm")
        class ToyNorm:
            name, version, Config, kinds = "toy_norm", "1", ToyNormConfig, ("causal_lm",)

            def __init__(self, config):
                self.config = config

            def check(self, ctx):
                return {}

            def __call__(self, bundle, ctx):
                ws = [bundle.adapter.weight_matrix(m) for m in bundle.adapter.linear_paths(bundle.model).values()]
                value = float(sum(w.abs().sum() for w in ws) / sum(w.numel() for w in ws))
                return EvalResult([Metric("mean_abs_weight", value)], {"what": "mean |w| of the block linears"})
    ''',
    "slimbench_toyplugin/conf/method/toy_scale.yaml": "name: toy_scale\nfactor: 0.5\n",
    "slimbench_toyplugin/conf/eval/toy.yaml": "suite: toy\nevaluators:\n  toy_norm: {}\n",
}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The plugin pip-installed into a temporary site dir; the environment that sees it."""
    root = tmp_path_factory.mktemp("plugin")
    for rel, text in PLUGIN.items():
        path = root / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    site = root / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), str(root / "src")], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert (site / "slimbench_toyplugin" / "conf" / "method" / "toy_scale.yaml").is_file()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]), "SLIMBENCH_DATA_DIR": str(REPO / "tests" / "fixtures" / "data"),
            "SLIMBENCH_RESULTS_DIR": str(root / "results"), "SLIMBENCH_CACHE_DIR": str(root / "cache")}


def _slimbench(args, env, tmp_path):
    return subprocess.run([sys.executable, "-m", "slimbench.cli", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_the_plugins_method_and_evaluator_are_listed_and_misspellings_get_a_suggestion(plugin_env, tmp_path):
    listing = _slimbench(["methods"], plugin_env, tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("| toy_scale |"))
    assert "| test |" in row and "Toy scaling" in row
    one = _slimbench(["methods", "toy_scale", "--json"], plugin_env, tmp_path)
    (info,) = json.loads(one.stdout)
    assert info["params"] == [{"name": "factor", "type": "float", "default": 0.5, "valid": "> 0", "doc": "what every weight is multiplied by"}]
    assert "toy_norm" in _slimbench(["evaluators"], plugin_env, tmp_path).stdout
    typo = _slimbench(["method=toy_scal", "tracker=none"], plugin_env, tmp_path)
    assert typo.returncode == 2 and "did you mean 'toy_scale'?" in typo.stderr


def test_a_run_uses_the_plugins_presets_without_hydra_searchpath(plugin_env, tmp_path):
    run = _slimbench(["model=tiny-llama", "method=toy_scale", "method.factor=0.25", "eval=toy", "tracker=none"], plugin_env, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (record,) = ResultStore(plugin_env["SLIMBENCH_RESULTS_DIR"]).records()
    assert record.method_name == "toy_scale" and record.stages[0]["config"] == {"factor": 0.25}
    assert record.metric("toy_norm", "mean_abs_weight") > 0 and record.eval["suite"] == "toy"
