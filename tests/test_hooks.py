"""The hook layer: named, removable, stateful hooks, and the runtime-method contract."""

from dataclasses import dataclass

import pytest
import torch

from slimbench.hooks import FunctionHook, Hook, HookRegistry
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.registry import Registry
from slimbench.run import compress


class Double(Hook):
    def forward(self, module, call, *args, **kwargs):
        self.count("calls")
        return 2 * call(*args, **kwargs)


class Skip(Hook):
    """Returns its cached output instead of calling the module (a stateful, skipping hook)."""

    def __init__(self):
        super().__init__()
        self.cache = None

    def forward(self, module, call, *args, **kwargs):
        if self.cache is not None:
            self.count("skipped")
            return self.cache
        self.cache = call(*args, **kwargs)
        return self.cache

    def reset_state(self):
        self.cache = None


def test_hooks_chain_in_order_and_restore_the_module_exactly():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    plain = lin(x)
    reg = HookRegistry()
    reg.add("outer", lin, FunctionHook(post=lambda m, a, k, out: seen.append(out.clone())))
    seen = []
    reg.add("double", lin, Double())
    assert torch.equal(lin(x), 2 * plain) and torch.equal(seen[0], 2 * plain)  # outer sees the inner hook's output
    assert reg.counters() == {"outer": {}, "double": {"calls": 1}}
    reg.remove("double")
    assert torch.equal(lin(x), plain)
    reg.remove_all()
    assert "forward" not in lin.__dict__ and len(reg) == 0 and torch.equal(lin(x), plain)
    with pytest.raises(KeyError, match="no hook named 'double'"):
        reg.remove("double")


def test_names_are_unique_and_scopes_remove_what_they_added():
    lin = torch.nn.Linear(4, 3)
    reg = HookRegistry.of(lin)
    assert HookRegistry.of(lin) is reg  # one registry per model
    reg.add("kept", lin, Double())
    with pytest.raises(ValueError, match="already installed"):
        reg.add("kept", lin, Double())
    with pytest.raises(RuntimeError):
        with reg.scope():
            reg.add("temporary", lin, Double())
            raise RuntimeError("the scope still cleans up")
    assert reg.names() == ["kept"]


def test_skipping_hook_state_is_reset_per_run():
    lin = torch.nn.Linear(4, 3)
    reg = HookRegistry.of(lin)
    hook = reg.add("skip", lin, Skip())
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    first = lin(a)
    assert torch.equal(lin(b), first) and hook.counters["skipped"] == 1  # really not executed: the cache came back
    reg.reset_state()
    assert torch.equal(lin(b), torch.nn.Linear.forward(lin, b))


# -- the runtime-method contract, proven with a toy method ----------------------------------------
TOY: Registry = Registry("toy method")


@dataclass(frozen=True)
class ScaleConfig:
    factor: float = 0.5


@register_method("scale_mlp", config=ScaleConfig, family="test", sort="runtime", kinds=("causal_lm", "diffusion"), registry=TOY)
class ScaleMLP(MethodBase):
    """Scales every block's MLP output: a runtime method is its config plus the hooks it installs."""

    def apply(self, bundle, calib) -> MethodResult:
        factor = self.config.factor

        class Scale(Hook):
            def forward(self, module, call, *args, **kwargs):
                self.count("calls")
                return factor * call(*args, **kwargs)

        for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
            mlp = dict(block.named_modules())[bundle.adapter.mlp]
            bundle.hooks.add(f"scale_mlp/{i}", mlp, Scale())
        return MethodResult("dense")


def _output(bundle):
    inputs = bundle.io.example_inputs(bundle.model, 2, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.io.forward(bundle.model, inputs)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-dit"])
def test_toy_runtime_method_is_installed_counted_and_removed_exactly(tiny_bundle, model):
    bundle = tiny_bundle(model)
    dense = _output(bundle)
    report = compress(ScaleMLP(ScaleConfig()), bundle, None)
    blocks = len(bundle.adapter.get_blocks(bundle.model))
    assert report.stages[0].hooks == [f"scale_mlp/{i}" for i in range(blocks)]  # the record names the hooks
    hooked = _output(bundle)
    assert not torch.allclose(hooked, dense)
    assert all(c == {"calls": 1} for c in bundle.hooks.counters("scale_mlp/").values())
    bundle.hooks.remove_all("scale_mlp/")
    assert torch.equal(_output(bundle), dense)  # bitwise
