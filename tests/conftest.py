"""Shared fixtures: the data dir, Hydra composition, tiny models built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
# a few KB of text written for the tests (WikiText-2 raw layout): tiny-model tests never skip
FIXTURE_DATA_DIR = REPO / "tests" / "fixtures" / "data"


def _data_dir() -> Path | None:
    env = os.environ.get("SLIMBENCH_DATA_DIR")
    path = Path(env) if env else DEFAULT_DATA_DIR
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (tests of real-data numbers); skips where there are none."""
    path = _data_dir()
    if path is None:
        pytest.skip("no data dir: set SLIMBENCH_DATA_DIR to the shared datasets (CI does)")
    return path


@pytest.fixture(scope="session")
def text_dir() -> Path:
    """The test corpus under tests/fixtures/data: always there, the same everywhere."""
    return FIXTURE_DATA_DIR


@pytest.fixture
def compose(tmp_path, text_dir, request):
    """compose(*overrides, real_data=False) -> a resolved plain config writing to a temporary
    results dir, reading the test corpus (or the real datasets: then it skips without them)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    def _compose(*overrides: str, real_data: bool = False) -> dict:
        base = [
            f"paths.data_dir={request.getfixturevalue('data_dir') if real_data else text_dir}",
            f"paths.results_dir={tmp_path / 'results'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "tracker=none",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=base + list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)

    return _compose


TINY_EVAL = ("eval=quick", "eval.evaluators.perplexity.max_windows=2", "eval.evaluators.perplexity.seqlen=256",
             "eval.evaluators.latency.repeats=2", "eval.evaluators.latency.new_tokens=4", "eval.evaluators.latency.prompt_len=16")


@pytest.fixture
def tiny_bundle():
    """tiny_bundle(name) -> a freshly built tiny model bundle (no files, no network)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from slimbench.models.loaders import LoadContext, resolve_model

    def _build(name: str = "tiny-llama"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[f"model={name}"])
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        ctx = LoadContext(cache_dir=Path("/nonexistent-cache"))
        source, loader, config = resolve_model(model_cfg, ctx)
        return loader.load(source, config, ctx)

    return _build
