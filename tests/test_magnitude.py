import pytest
import torch

from slimbench.errors import ConfigError
from slimbench.methods.pruning.magnitude import Magnitude, MagnitudeConfig
from slimbench.methods.pruning.masks import lowest_fraction_mask, nm_mask


def test_lowest_fraction_mask_counts_exactly():
    score = torch.rand(8, 32)
    mask = lowest_fraction_mask(score, 0.5, per_row=True)
    assert (mask.sum(1) == 16).all()
    kept_min = score.masked_fill(mask, float("inf")).min(1).values
    pruned_max = score.masked_fill(~mask, float("-inf")).max(1).values
    assert (pruned_max <= kept_min).all()
    whole = lowest_fraction_mask(score, 0.3, per_row=False)
    assert whole.sum() == int(score.numel() * 0.3)


def test_nm_mask_keeps_exactly_m_minus_n_per_group():
    score = torch.rand(4, 16)
    mask = nm_mask(score, 2, 4).view(4, 4, 4)
    assert (mask.sum(-1) == 2).all()
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(torch.rand(2, 6), 2, 4)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_magnitude_unstructured_prunes_the_smallest_per_matrix(tiny_bundle, sparsity):
    bundle = tiny_bundle("tiny-llama")
    linears = bundle.adapter.linear_paths(bundle.model)
    original = {n: m.weight.detach().clone() for n, m in linears.items()}
    Magnitude(MagnitudeConfig(sparsity=sparsity)).apply(bundle, None)
    for name, module in linears.items():
        w, w0 = module.weight, original[name]
        zeros = w == 0
        assert zeros.sum().item() == int(w.numel() * sparsity)
        assert w0.abs()[zeros].max() <= w0.abs()[~zeros].min()
        assert torch.equal(w[~zeros], w0[~zeros])  # no weight update


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_magnitude_nm_pattern(tiny_bundle, pattern, n, m):
    bundle = tiny_bundle("tiny-llama")
    Magnitude(MagnitudeConfig(sparsity=n / m, pattern=pattern)).apply(bundle, None)
    for module in bundle.adapter.linear_paths(bundle.model).values():
        groups = (module.weight == 0).view(module.weight.shape[0], -1, m)
        assert (groups.sum(-1) == n).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.5}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"pattern": "2-4"}, "pattern must be"),
        ({"pattern": "4:2"}, "0 < N < M"),
        ({"pattern": "2:4", "sparsity": 0.3}, "fixes the sparsity at 0.5"),
    ],
)
def test_magnitude_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MagnitudeConfig(**kwargs)
