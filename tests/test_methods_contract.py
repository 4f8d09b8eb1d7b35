"""Contract tests over the whole method registry (they run everywhere: tiny models built from
configs, the test corpus in tests/fixtures/data).

Adding a method = one Python file + one YAML preset + a row in CONTRACT below. A registered
method without a preset or a row fails ``test_registry_is_covered``.
"""

from dataclasses import dataclass, field

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.configs import build_dataclass, config_to_dict
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.methods import METHODS
from slimbench.run import compress
from tests.conftest import CONF_DIR


@dataclass(frozen=True)
class Contract:
    model: str = "tiny-llama"
    overrides: tuple = ()
    sparsity: float | None = None  # measured sparsity the method must produce, if any
    changes_weights: bool = True
    extra: dict = field(default_factory=dict)


CONTRACT = {
    "dense": Contract(sparsity=0.0, changes_weights=False),
    "magnitude": Contract(overrides=("method.sparsity=0.5",), sparsity=0.5),
    "wanda": Contract(overrides=("method.sparsity=0.5",), sparsity=0.5),
    "sparsegpt": Contract(overrides=("method.sparsity=0.5",), sparsity=0.5),
    "rtn": Contract(overrides=("method.group_size=32",)),
    "gptq": Contract(overrides=("method.group_size=32",)),
    "awq": Contract(overrides=("method.group_size=32",)),
    "smoothquant": Contract(),
    "mixed_precision": Contract(overrides=("method.group_size=32",)),
    "svd": Contract(overrides=("method.ratio=0.2",)),
    "fwsvd": Contract(overrides=("method.ratio=0.2",)),
    "asvd": Contract(overrides=("method.ratio=0.2", "method.sensitivity_samples=1", "method.sensitivity_seqlen=16", "method.candidates=[0.6,0.8]")),
    "svd_llm": Contract(overrides=("method.ratio=0.2",)),
    # tiny-llama has 2 blocks (tiny-gemma3 3): one module dropped
    "attn_drop": Contract(overrides=("method.drop_n=1",)),
    "mlp_drop": Contract(model="tiny-gemma3", overrides=("method.drop_n=1",)),
    "block_drop": Contract(overrides=("method.drop_n=1",)),
    "joint_drop": Contract(model="tiny-gemma3", overrides=("method.drop_n=2",)),
    "shortgpt": Contract(overrides=("method.drop_n=1",)),
    "numerical_pruning": Contract(overrides=("method.ratio=0.3", "method.ratio_of=params")),
    "flap": Contract(model="tiny-gemma3", overrides=("method.ratio=0.3",)),
    # runtime methods: hooks, no weight changes; removing the hooks restores the outputs bitwise
    "moe_topk": Contract(model="tiny-moe", changes_weights=False),  # saved with their preset configs (test_checkpoint)
    "moe_topp": Contract(model="tiny-olmoe", changes_weights=False),
    # runtime methods of diffusion models: hooks only, removable
    "fora": Contract(model="tiny-dit", changes_weights=False),
    "first_block_cache": Contract(model="tiny-dit", changes_weights=False),
    "lazydit": Contract(model="tiny-dit", changes_weights=False,
                        overrides=("method.steps=4", "method.train_steps=2", "method.batch_size=2", "method.images=2")),
}


def _measured_params(model):
    """Parameters, with packed modules (``storage_stats``) counted by the weights they represent."""
    packed = [m for m in model.modules() if callable(getattr(m, "storage_stats", None))]
    inside = {id(t) for m in packed for t in list(m.parameters()) + list(m.buffers())}
    plain = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in inside)
    return plain + sum(m.storage_stats()[0] for m in packed)


def _output(bundle):
    """The model's output on its kind's seeded example inputs."""
    inputs = bundle.io.example_inputs(bundle.model, 2, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.io.forward(bundle.model, inputs)


def _method_from_preset(name, overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={name}", *[f"++{o}" for o in overrides]])
    params = OmegaConf.to_container(cfg.method, resolve=True)
    cls = METHODS.get(params.pop("name"))
    return cls, cls(build_dataclass(cls.Config, params, owner=name))


def _calibration(bundle, text_dir):
    ref = resolve_corpus("wikitext2", "validation", text_dir)
    return build_calibration_set(CalibConfig(nsamples=4, seqlen=64, seed=0), ref, bundle.tokenizer)


def _stored_bytes(model) -> int:
    """Bytes of every distinct storage the model's state dict holds (an independent count: a
    sliced layer that still kept a view of its dense parent would show up here)."""
    storages = {}
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor) and t.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def _zeros_and_weights(bundle) -> tuple[int, int]:
    """Exact zeros among the block linears' weights, counted from the dequantized weights."""
    zeros = total = 0
    for m in bundle.adapter.linear_paths(bundle.model).values():
        w = bundle.adapter.weight_matrix(m)
        if callable(getattr(m, "codes", None)):  # packed: s·(q − z) is exactly 0 where q == z
            w = m.codes() - _zero_points(m)
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros, total


def _zero_points(m):
    from slimbench.kernels.qlinear import _ZERO_POINTS

    return _ZERO_POINTS[m.layout](m)


def test_registry_is_covered():
    for name in METHODS.names():
        assert (CONF_DIR / "method" / f"{name}.yaml").is_file(), f"method {name} has no conf/method/{name}.yaml"
        assert name in CONTRACT, f"method {name} has no row in the contract table"
    for preset in (CONF_DIR / "method").glob("*.yaml"):
        if preset.stem != "stages":  # the empty node pipelines fill (conf/pipeline/)
            assert OmegaConf.load(preset).name in METHODS, f"{preset.name} names an unregistered method"


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_method_contract(name, tiny_bundle, text_dir):
    contract = CONTRACT[name]
    cls, method = _method_from_preset(name, contract.overrides)
    assert cls.family and cls.sort in ("weight", "runtime") and cls.summary()

    # config round trip
    assert build_dataclass(cls.Config, config_to_dict(method.config), owner=name) == method.config

    def run_once():
        torch.manual_seed(0)
        bundle = tiny_bundle(contract.model)
        calib = _calibration(bundle, text_dir) if method.requires_calibration else None
        before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
        reference = _output(bundle)  # before compression: what removing a runtime method's hooks must restore
        report = compress(method, bundle, calib)
        return bundle, before, report, reference

    bundle, before, report, reference = run_once()
    assert torch.isfinite(_output(bundle)).all()

    after = bundle.model.state_dict()
    changed = any(k not in after or not torch.equal(before[k], after[k]) for k in before)
    assert changed == contract.changes_weights
    zeros, total = _zeros_and_weights(bundle)
    assert report.sparsity == pytest.approx(zeros / total)  # reported = counted independently
    if contract.sparsity is not None:
        assert report.sparsity == pytest.approx(contract.sparsity, abs=0.01)
    assert report.params_after == _measured_params(bundle.model)
    assert report.bytes_after == _stored_bytes(bundle.model)
    assert report.baseline == (not contract.changes_weights and cls.sort != "runtime")
    stage = report.stages[0]
    assert stage.method == name and (stage.layers or not contract.changes_weights)
    for layer in stage.layers:  # typed per-layer reports, measured by the harness
        assert layer.params_before and layer.params_after is not None and layer.change
        assert layer.params_after <= layer.params_before or layer.change == "quantized"

    # runtime methods: named hooks, and removing them restores the outputs bitwise
    assert stage.hooks == bundle.hooks.names() and bool(stage.hooks) == (cls.sort == "runtime")
    if cls.sort == "runtime":
        bundle.hooks.remove_all()
        assert torch.equal(_output(bundle), reference)

    # seeded determinism
    bundle2, _, _, _ = run_once()
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, bundle2.model.state_dict()[key]), key
