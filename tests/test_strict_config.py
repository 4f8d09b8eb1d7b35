"""Strict parsing of config values: the dataclass field types decide, one mechanism for every node."""

from dataclasses import dataclass

import pytest

from slimbench.configs import RunSettings, build_dataclass, config_to_dict, run_settings
from slimbench.errors import ConfigError
from slimbench.methods import METHODS


@dataclass(frozen=True)
class _Typed:
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    name: str = "x"
    limit: int | None = None
    names: tuple[str, ...] = ("a",)
    pair: tuple[int, float] = (1, 2.0)
    extra: dict | None = None


@pytest.mark.parametrize("key,value,parsed", [
    ("flag", True, True), ("flag", "false", False), ("flag", "True", True),
    ("count", 3, 3), ("count", "-2", -2),  # a string of digits (an ${oc.env:...} interpolation)
    ("rate", 0, 0.0), ("rate", 1, 1.0), ("rate", "0.25", 0.25),  # YAML/Hydra ints for floats
    ("name", "y", "y"), ("name", 1234, "1234"),
    ("limit", None, None), ("limit", 5, 5),
    ("names", "piqa", ("piqa",)), ("names", ["a", "b"], ("a", "b")), ("pair", [3, 4], (3, 4.0)),
    ("extra", {"k": 1}, {"k": 1}),
])
def test_values_are_parsed_by_their_field_type(key, value, parsed):
    got = getattr(build_dataclass(_Typed, {key: value}, owner="t"), key)
    assert got == parsed and type(got) is type(parsed)


@pytest.mark.parametrize("key,value,message", [
    ("flag", "no", "t: flag must be true or false, got 'no'"),
    ("flag", 1, "t: flag must be true or false, got 1"),
    ("flag", "yes", "t: flag must be true or false, got 'yes'"),
    ("count", "abc", "t: count must be an integer, got 'abc'"),
    ("count", 4.0, "t: count must be an integer, got 4.0"),
    ("count", True, "t: count must be an integer, got True"),
    ("count", None, "t: count must be an integer, got None"),
    ("rate", "abc", "t: rate must be a number, got 'abc'"),
    ("rate", float("nan"), "t: rate must be a finite number, got nan"),
    ("rate", "inf", "t: rate must be a finite number, got 'inf'"),
    ("rate", False, "t: rate must be a number, got False"),
    ("name", 1.5, "t: name must be a string, got 1.5"),
    ("name", ["a"], "t: name must be a string, got ['a']"),
    ("limit", "many", "t: limit must be an integer, got 'many'"),
    ("names", [1.5], "t: names[0] must be a string, got 1.5"),
    ("pair", [1, 2, 3], "t: pair must list 2 values, got [1, 2, 3]"),
    ("extra", [1], "t: extra must be a mapping (key: value, ...), got [1]"),
])
def test_a_value_of_the_wrong_type_is_a_one_line_error(key, value, message):
    with pytest.raises(ConfigError) as info:
        build_dataclass(_Typed, {key: value}, owner="t")
    assert str(info.value) == message


def test_every_registered_method_config_parses_its_own_defaults_back():
    """No field annotation the mechanism cannot honour: config -> dict -> config is the identity."""
    for name, cls in METHODS.items():
        config = cls.Config()
        assert build_dataclass(cls.Config, config_to_dict(config), owner=name) == config


@pytest.mark.parametrize("cfg,message", [
    ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
    ({"force": "maybe"}, "force must be true or false, got 'maybe'"),
    ({"fuse_stages": 1}, "fuse_stages must be true or false, got 1"),
    ({"threads": 0}, "threads must be >= 1 or null"),
    ({"threads": -2}, "threads must be >= 1 or null"),
    ({"sed": 1}, "unknown key 'sed' (keys: seed, device, threads, force, fuse_stages, offload, save_dir, paths, model, method, eval, calib, tracker); did you mean 'seed'?"),
    ({"paths": {"result_dir": "x"}}, "unknown key 'paths.result_dir' (keys: paths.data_dir, paths.results_dir, paths.cache_dir); did you mean 'paths.results_dir'?"),
    ({"paths": {"data_dir": ""}}, "paths.data_dir is empty"),
    ({"paths": {"cache_dir": 3.5}}, "paths.cache_dir must be a string, got 3.5"),
    ({"save_dir": ""}, "save_dir is empty"),
    ({"device": "tpu"}, "device 'tpu' is not a torch device"),
    ({"device": "cuda:99"}, "device=cuda:99 but"),
])
def test_top_level_keys_parse_strictly(cfg, message):
    with pytest.raises(ConfigError) as info:
        run_settings(cfg)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_config_yaml_states_the_run_settings_defaults():
    """One source of truth: conf/config.yaml's top-level values equal RunSettings' defaults."""
    import yaml

    from tests.conftest import CONF_DIR

    data = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    defaults = RunSettings()
    for key in ("seed", "device", "threads", "force", "fuse_stages", "save_dir"):
        assert data[key] == getattr(defaults, key), key
    assert set(data["paths"]) == {"data_dir", "results_dir", "cache_dir"}
