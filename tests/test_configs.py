"""Every YAML in conf/ composes, and every preset validates."""

from pathlib import Path

import pytest
from hydra import compose as compose_hydra
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from slimbench.cli import PIPELINE_PLACEHOLDER, preflight
from slimbench.configs import build_dataclass, config_to_dict
from slimbench.errors import ConfigError
from slimbench.methods import METHODS
from slimbench.run import plan_run
from tests.conftest import CONF_DIR

EXTRA = {("model", "hf"): ["model.id=gpt2"]}
# tiny-llama deep enough for every preset's defaults (layer dropping's drop_n=4 needs more than 4 blocks)
DEEP_TINY = ("model=tiny-llama", "model.config.num_hidden_layers=6")
# methods that need another tiny model than DEEP_TINY (MoE routing needs MoE layers)
TINY_FOR = {"moe_topk": ("model=tiny-moe",), "moe_topp": ("model=tiny-moe",)}


def _tiny_for(group: str, option: str) -> tuple[str, ...]:
    """The tiny model a preset is validated on: TINY_FOR, tiny-dit for methods of diffusion models only, else DEEP_TINY."""
    if option in TINY_FOR:
        return TINY_FOR[option]
    if group == "method" and "causal_lm" not in METHODS.get(OmegaConf.load(CONF_DIR / "method" / f"{option}.yaml").name).kinds:
        return ("model=tiny-dit",)
    return DEEP_TINY


METHOD_PRESETS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem != PIPELINE_PLACEHOLDER)


def _options():
    for group in ("model", "method", "eval", "calib", "tracker", "experiment", "pipeline"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            if (group, path.stem) != ("method", PIPELINE_PLACEHOLDER):
                yield group, path.stem


def _leaves(tree: dict, prefix: str = "") -> set:
    """{(dotted key, value)} of a nested dict's leaves."""
    out = set()
    for k, v in tree.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {(f"{prefix}{k}", repr(v))}
    return out


@pytest.mark.parametrize("group,option", list(_options()))
def test_every_config_composes_and_validates(group, option, compose):
    """Each option composes with the defaults; those of a tiny model's kind also pass validation."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_hydra(config_name="config", overrides=[f"{group}={option}", *EXTRA.get((group, option), [])], return_hydra_config=True)
        default = compose_hydra(config_name="config", return_hydra_config=True)
    preset = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    if group in ("experiment", "pipeline"):  # global presets: they change the composed config (a sweep preset: its grid)
        sweep = cfg.hydra.sweeper.params or cfg.hydra.sweeper.get("grids")
        assert OmegaConf.to_container(cfg.method) != OmegaConf.to_container(default.method) or sweep
    else:  # the group's node is the preset's content (+ the override EXTRA gives)
        content = {k: v for k, v in OmegaConf.to_container(preset).items() if k != "defaults"}
        node = OmegaConf.to_container(cfg[group])
        if (group, option) not in EXTRA:  # every value the preset sets is in the node (presets may extend another)
            assert _leaves(content) <= _leaves(node), sorted(_leaves(content) - _leaves(node))
    if group in ("method", "pipeline", "calib") and option != "dit-trajectory":
        plan = plan_run(compose(*_tiny_for(group, option), f"{group}={option}"))
        assert plan.stages and plan.evaluators


@pytest.mark.parametrize("method", METHOD_PRESETS)
def test_every_method_preset_validates(compose, method):
    plan = plan_run(compose(*_tiny_for("method", method), f"method={method}"))
    assert [s.name for s in plan.stages] == [method]


@pytest.mark.parametrize("method", METHOD_PRESETS)
def test_method_yaml_defaults_equal_the_config_dataclass_defaults(method):
    """One source of truth: a preset states the dataclass defaults, never different ones."""
    preset = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml")).items() if k != "name"}
    cls = METHODS.get(method)
    defaults = config_to_dict(cls.Config())
    assert set(preset) == set(defaults), f"{method}.yaml lists {sorted(preset)}, the dataclass {sorted(defaults)}"
    assert build_dataclass(cls.Config, preset, owner=method) == cls.Config()


def test_defaults_are_smollm2_dense_quick_wandb_offline():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_hydra(config_name="config")
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


def test_preflight_expands_an_ad_hoc_pipeline_and_checks_its_stages():
    out = preflight(["pipeline=[wanda, gptq]", "method.0.pattern=2:4"])
    assert out == ["method=stages", "+method@method.0=wanda", "+method@method.1=gptq", "++method.0.pattern=2:4"]
    with pytest.raises(ConfigError, match="unknown method 'gtpq'.*did you mean 'gptq'"):
        preflight(["pipeline=[wanda,gtpq]"])
    with pytest.raises(ConfigError, match="at least two stages"):
        preflight(["pipeline=[wanda]"])


def test_pipelines_compose_from_the_command_line_spelling_and_from_presets(compose):
    adhoc = plan_run(compose(*preflight(["pipeline=[wanda,gptq]", "method.0.pattern=2:4", "method.1.group_size=64"]), "model=tiny-llama"))
    preset = plan_run(compose("pipeline=wanda24-gptq4", "model=tiny-llama"))
    for plan in (adhoc, preset):
        assert [s.name for s in plan.stages] == ["wanda", "gptq"]
        assert plan.stages[0].method.config.pattern == "2:4" and plan.stages[1].method.config.group_size == 64
    assert adhoc.run_id == preset.run_id  # the same experiment, however it is spelled
    assert plan_run(compose("method=wanda", "model=tiny-llama")).run_id != adhoc.run_id


@pytest.mark.parametrize("stages,message", [
    (["gptq", "sparsegpt"], r"pipeline stage 1 \(sparsegpt\) cannot follow gptq: .*packed integer weights"),
    (["svd", "wanda"], r"stage 1 \(wanda\) cannot follow svd: .*low-rank factors"),
    (["rtn", "awq"], r"stage 1 \(awq\) cannot follow rtn"),
])
def test_impossible_stage_orders_fail_in_validation(compose, stages, message):
    with pytest.raises(ConfigError, match=message):
        plan_run(compose(*preflight([f"pipeline=[{','.join(stages)}]"]), "model=tiny-llama"))


@pytest.mark.parametrize("stages", [["wanda", "gptq"], ["svd_llm", "rtn"], ["flap", "block_drop"], ["sparsegpt", "awq"], ["numerical_pruning", "gptq"]])
def test_possible_stage_orders_validate(compose, stages):
    plan = plan_run(compose(*preflight([f"pipeline=[{','.join(stages)}]"]), *DEEP_TINY))
    assert [s.name for s in plan.stages] == stages
