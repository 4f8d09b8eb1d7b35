"""Step-caching runtime methods on a tiny DiT: FORA, LazyDiT, First Block Cache.

What is checked: skipped branch calls are counted AND really not executed (a forward hook on
the branch's first linear sees only the rows that ran); zero (untrained) lazy gates skip
nothing; removing the hooks restores the sampler's output bitwise; a sampler whose step count
differs from the gates' is refused; the evaluator's share of skipped computations.
"""

import pytest
import torch

from slimbench.diffusion import SamplerConfig, sample
from slimbench.errors import ConfigError
from slimbench.methods.diffusion.first_block_cache import FirstBlockCache, FirstBlockCacheConfig
from slimbench.methods.diffusion.fora import Fora, ForaConfig
from slimbench.methods.diffusion.lazydit import LazyDiT, LazyDiTConfig
from slimbench.run import compress

IMAGES, BATCH = 6, 3


def _sample(bundle, steps=10):
    arch = bundle.model.config
    return sample(lambda x, t, y: bundle.io.denoise(bundle.model, x, t, y), SamplerConfig(steps=steps),
                  torch.arange(IMAGES) % 10, (arch.channels, arch.img_size, arch.img_size), seed=0, batch_size=BATCH,
                  on_batch_start=bundle.hooks.reset_state)


def _executed_rows(bundle):
    """Rows that really ran through each block's attention and MLP (forward hooks on their first linear)."""
    rows = {}
    for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
        for kind, linear in (("attn", block.attn.wq), ("mlp", block.ff[0])):
            def record(module, args, output, key=f"{i}.{kind}"):
                rows[key] = rows.get(key, 0) + args[0].shape[0]
            linear.register_forward_hook(record)
    return rows


def _counts(bundle, prefix):
    counters = bundle.hooks.counters(prefix)
    return {name.split("/", 1)[1]: (c.get("computed", 0), c.get("skipped", 0)) for name, c in counters.items()}


def test_fora_recomputes_every_n_steps_and_really_skips_the_rest(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    dense = _sample(bundle)
    compress(Fora(ForaConfig(interval=3)), bundle, None)
    executed = _executed_rows(bundle)
    out = _sample(bundle)
    # S = 10, chain i = 9..0: compute at i = 9 and i mod 3 = 0 (9, 6, 3, 0): 4 of 10 steps
    for branch, (computed, skipped) in _counts(bundle, "fora/").items():
        assert (computed, skipped) == (4 * IMAGES, 6 * IMAGES)
        assert executed[branch] == computed  # the skipped calls never reached the module
    assert not torch.equal(out, dense)
    bundle.hooks.remove_all("fora/")
    assert torch.equal(_sample(bundle), dense)  # removable: bitwise


def test_fora_interval_1_changes_nothing(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    dense = _sample(bundle)
    compress(Fora(ForaConfig(interval=1)), bundle, None)
    assert torch.equal(_sample(bundle), dense)
    assert all(s == 0 for _, s in _counts(bundle, "fora/").values())


def _lazy(bundle, steps=10, **train):
    """LazyDiT's gates installed as at initialisation (zero), without training."""
    method = LazyDiT(LazyDiTConfig(steps=steps, **train))
    return method, method._install(bundle)


def test_lazy_gates_at_initialisation_skip_nothing(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    dense = _sample(bundle)
    _, gates = _lazy(bundle)
    assert all(torch.count_nonzero(g.weight) == 0 for g in gates.values())
    assert torch.equal(_sample(bundle), dense)  # score = sigmoid(0) = 0.5 >= 0.5: compute
    assert all(s == 0 and c == 10 * IMAGES for c, s in _counts(bundle, "lazydit/").values())


def test_lazy_skips_per_sample_and_runs_only_the_computing_rows(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    _, gates = _lazy(bundle)
    gate = gates["0.mlp"]
    with torch.no_grad():  # chain index 4 skips for every sample, index 2 for a data-dependent part
        gate.weight[4] = -1e4 * torch.ones_like(gate.weight[4])
        gate.weight[2] = torch.linspace(-5, 5, gate.weight.shape[1])
    executed = _executed_rows(bundle)
    _sample(bundle)
    computed, skipped = _counts(bundle, "lazydit/")["0.mlp"]
    assert computed + skipped == 10 * IMAGES and skipped >= IMAGES  # index 4 at least
    assert executed["0.mlp"] == computed  # mixed batches ran only their computing rows
    assert _counts(bundle, "lazydit/")["1.attn"] == (10 * IMAGES, 0)  # untouched gates: nothing skipped


def test_lazy_gates_refuse_a_sampler_with_another_step_count(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    _lazy(bundle, steps=10)
    with pytest.raises(ConfigError, match="trained for 10 sampling steps, the sampler runs 5"):
        _sample(bundle, steps=5)


def test_lazy_training_learns_to_skip_only_trained_steps_and_is_removable(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    dense = _sample(bundle)
    config = LazyDiTConfig(steps=10, rho=10.0, train_steps=40, batch_size=4, images=8, lr=1e-2)
    report = compress(LazyDiT(config), bundle, None)
    details = report.stages[0].details
    assert details["trained_chain_indices"] == [0, 2, 4, 6, 8] and details["gate_training_s"] > 0
    gates = {n: bundle.hooks.get(n) for n in bundle.hooks.names("lazydit/")}
    for gate in gates.values():  # odd chain indices never receive gradient: they stay zero (compute)
        assert torch.count_nonzero(gate.weight[1::2]) == 0
    assert any(torch.count_nonzero(g.weight[0::2]) for g in gates.values())
    _sample(bundle)
    skipped = sum(s for _, s in _counts(bundle, "lazydit/").values())
    assert 0 < skipped <= 5 * IMAGES * len(gates)  # a strong penalty skips, at most every other step
    bundle.hooks.remove_all("lazydit/")
    assert torch.equal(_sample(bundle), dense)


def test_first_block_cache_skips_the_tail_when_the_head_residual_is_unchanged(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    dense = _sample(bundle)
    compress(FirstBlockCache(FirstBlockCacheConfig(threshold=1e9)), bundle, None)  # every step after the first reuses
    blocks = bundle.adapter.get_blocks(bundle.model)
    ran = {"tail": 0}
    blocks[1].ff[0].register_forward_hook(lambda m, a, o: ran.__setitem__("tail", ran["tail"] + a[0].shape[0]))
    _sample(bundle)
    counts = _counts(bundle, "first_block_cache/")
    assert counts["0"] == (10 * IMAGES, 0)
    assert counts["1"] == (IMAGES, 9 * IMAGES)  # the first step of each batch computes
    assert ran["tail"] == IMAGES
    bundle.hooks.remove_all()
    compress(FirstBlockCache(FirstBlockCacheConfig(threshold=0.0)), bundle, None)  # never similar enough
    assert torch.equal(_sample(bundle), dense)
    bundle.hooks.remove_all()
    assert torch.equal(_sample(bundle), dense)


@pytest.mark.parametrize("bad", [{"interval": 0}, {"interval": 1.5}])
def test_bad_fora_config(bad):
    with pytest.raises(ConfigError, match="interval"):
        ForaConfig(**bad)


@pytest.mark.parametrize("bad", [{"target": 1.0}, {"target": -0.1}, {"steps": 1}, {"rho": -1.0}, {"rho_grid": []}])
def test_bad_lazydit_config(bad):
    with pytest.raises(ConfigError):
        LazyDiTConfig(**bad)


@pytest.mark.slow  # two trainings and probes: ~11 s on the loaded 2-core machine
def test_lazy_target_picks_the_rho_whose_measured_ratio_is_closest(tiny_bundle):
    bundle = tiny_bundle("tiny-dit")
    config = LazyDiTConfig(steps=4, target=0.0, rho_grid=(10.0, 0.0), train_steps=10, batch_size=2, images=4, lr=1e-2, probe_images=2)
    details = compress(LazyDiT(config), bundle, None).stages[0].details
    ratios = {r["rho"]: r["probe_lazy_ratio"] for r in details["sweep"]}
    assert set(ratios) == {10.0, 0.0} and ratios[0.0] < ratios[10.0]  # a strong penalty skips more
    assert details["rho"] == 0.0


def test_lazy_gates_are_stored_and_a_second_run_reads_them(tiny_bundle, tmp_path, monkeypatch):
    """What LazyDiT learns is kept (checksummed safetensors under <cache_dir>/lazydit); the same
    settings on the same model load the gates instead of training, and the record says so."""
    import slimbench.methods.diffusion.lazydit as lazydit

    config = LazyDiTConfig(steps=4, rho=10.0, train_steps=5, batch_size=2, images=4, lr=1e-2)
    first = tiny_bundle("tiny-dit")
    first.cache_dir = tmp_path
    trained = compress(LazyDiT(config), first, None).stages[0].details
    weights = {n: g.weight.detach().clone() for n, g in ((n, first.hooks.get(n)) for n in first.hooks.names("lazydit/"))}
    assert "gates_entry" in trained and not trained.get("gates_from_cache")
    assert any(w.abs().sum() > 0 for w in weights.values())

    monkeypatch.setattr(lazydit, "_train", lambda *a, **k: pytest.fail("the stored gates were not used"))
    second = tiny_bundle("tiny-dit")
    second.cache_dir = tmp_path
    report = compress(LazyDiT(config), second, None).stages[0]
    assert report.details["gates_from_cache"] and report.details["gate_training_s"] == trained["gate_training_s"]
    assert any("gates read from" in n for n in report.notes)
    for name, w in weights.items():
        assert torch.equal(second.hooks.get(name).weight, w)
