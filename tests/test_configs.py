"""Every YAML in conf/ composes, and every preset validates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from slimbench.cli import preflight
from slimbench.errors import ConfigError
from slimbench.run import plan_run
from tests.conftest import CONF_DIR

EXTRA = {("model", "hf"): ["model.id=gpt2"]}


def _options():
    for group in ("model", "method", "eval", "calib", "tracker", "experiment"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize("group,option", list(_options()))
def test_every_config_composes(group, option):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}", *EXTRA.get((group, option), [])])
    assert cfg is not None


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))
def test_every_method_preset_validates(compose, method):
    plan = plan_run(compose("model=tiny-llama", f"method={method}"))
    assert plan.method.name == method


def test_defaults_are_smollm2_dense_quick_wandb_offline():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config")
    assert (cfg.model.name, cfg.method.name, cfg.eval.suite) == ("smollm2-135m", "dense", "quick")
    assert cfg.tracker.name == "wandb" and cfg.tracker.mode == "offline"


def test_preflight_rejects_unknown_group_options_in_one_line():
    with pytest.raises(ConfigError) as info:
        preflight(["method=magnitde"])
    assert str(info.value).startswith("unknown method 'magnitde' (available: ")
    assert "did you mean 'magnitude'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        preflight(["-m", "model=tiny-llama,nope"])


def test_preflight_makes_validated_node_overrides_forcing():
    out = preflight(["method=dense,magnitude", "method.sparsity=0.3,0.5", "seed=1", "+method.x=1"])
    assert out == ["method=dense,magnitude", "++method.sparsity=0.3,0.5", "seed=1", "+method.x=1"]
