"""Routing rules on router probabilities: top-k, Dynamic-MoE top-p (METHODS-papers.md §3.1), all."""

import pytest
import torch

from slimbench.errors import ConfigError
from slimbench.moe.routing import all_mask, expert_weights, normalise_mass, topk_mask, topp_mask


def _probs(T=64, E=8, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(T, E, generator=g), dim=-1)


def _topp_loop(row: list[float], p: float) -> set[int]:
    """Direct computation: experts in descending order until the running sum exceeds p."""
    order = sorted(range(len(row)), key=lambda e: (-row[e], e))
    chosen, total = set(), 0.0
    for e in order:
        chosen.add(e)
        total += row[e]
        if total > p:
            break
    return chosen


@pytest.mark.parametrize("p", [0.05, 0.3, 0.4, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_topp_matches_a_direct_loop_on_random_logits(p, scale):
    P = _probs(scale=scale).double()
    mask = topp_mask(P, p)
    for t in range(P.shape[0]):
        assert set(mask[t].nonzero().flatten().tolist()) == _topp_loop(P[t].tolist(), p)
    # the count varies per token on flat distributions, and is at least one
    assert mask.sum(-1).min() >= 1


def test_topp_keeps_the_crossing_expert_and_stops_there():
    P = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    assert topp_mask(P, 0.4).tolist() == [[False, True, False, False]]  # 0.5 > 0.4 at once
    assert topp_mask(P, 0.5).tolist() == [[False, True, True, False]]  # 0.5 is not > 0.5: add 0.3
    assert topp_mask(P, 0.79).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_topp_with_p_at_least_one_keeps_every_expert(p):
    P = _probs()
    assert torch.equal(topp_mask(P, p), all_mask(P))


def test_topp_is_the_reference_rule_where_the_sum_never_exceeds_p():
    # unnormalised masses summing below p keep every expert, as the reference's argmax-of-no-crossing does
    P = torch.tensor([[0.1, 0.2, 0.05]])
    assert topp_mask(P, 0.9).all()


def test_topk_picks_the_k_largest_and_breaks_ties_by_lower_index():
    P = _probs()
    for k in (1, 3, 8):
        mask = topk_mask(P, k)
        assert (mask.sum(-1) == k).all()
        expected = torch.zeros_like(mask).scatter_(-1, torch.topk(P, k).indices, True)
        assert torch.equal(mask, expected)
    ties = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    assert topk_mask(ties, 2).tolist() == [[True, True, False, False]]
    assert topp_mask(ties, 0.3).tolist() == [[True, True, False, False]]


def test_bad_k_and_p_are_one_line_errors():
    P = _probs(E=4)
    for k in (0, 5):
        with pytest.raises(ConfigError, match="1 <= k <= 4"):
            topk_mask(P, k)
    with pytest.raises(ConfigError, match="p > 0"):
        topp_mask(P, 0.0)


def test_expert_weights_raw_for_topp_and_renormalised_for_topk():
    P = _probs()
    mask = topp_mask(P, 0.5)
    raw = expert_weights(P, mask, renormalise=False)
    assert torch.equal(raw, P * mask)  # Dynamic-MoE: not renormalised
    renorm = expert_weights(P, topk_mask(P, 2), renormalise=True)
    torch.testing.assert_close(renorm.sum(-1), torch.ones(P.shape[0]))


def test_normalise_mass_sums_to_one():
    m = torch.rand(5, 6)
    torch.testing.assert_close(normalise_mass(m).sum(-1), torch.ones(5))
