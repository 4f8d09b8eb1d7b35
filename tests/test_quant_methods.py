"""RTN and GPTQ numerics: the min-max grid, partial groups, GPTQ below RTN's layer error."""

import math

import pytest
import torch

from slimbench.errors import ConfigError
from slimbench.kernels.qlinear import QuantLinear
from slimbench.methods.quant.common import minmax_params, rtn
from slimbench.methods.quant.gptq import GPTQConfig, gptq_quantize


def test_minmax_grid_matches_the_gptq_reference_rules():
    x = torch.tensor([[0.5, 1.0, 2.0, 3.0], [-1.0, -2.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    scale, zero = minmax_params(x, bits=2, sym=False)
    # row 0: range widened to include 0 -> [0, 3], s = 1, z = 0; row 1: [-2, 1], s = 1, z = 2
    torch.testing.assert_close(scale, torch.tensor([1.0, 1.0, 2 / 3]))
    torch.testing.assert_close(zero, torch.tensor([0.0, 2.0, 2.0]))  # all-zero row -> [-1, 1]
    scale, zero = minmax_params(x[:2], bits=2, sym=True)
    # row 1: 2·max|x|/3; row 0 (no negative value): the reference keeps xmin = 0 -> s = 3/3
    torch.testing.assert_close(scale, torch.tensor([1.0, 4 / 3]))
    torch.testing.assert_close(zero, torch.tensor([2.0, 2.0]))  # (maxq + 1) / 2
    scale, zero = minmax_params(x[:1], bits=2, sym=False, include_zero=False)  # AWQ: plain [min, max]
    torch.testing.assert_close(scale, torch.tensor([2.5 / 3]))


def test_rtn_partial_last_group():
    w = torch.randn(8, 576)
    q = rtn(w, bits=4, group_size=128, sym=False)
    assert q.scales.shape == (8, 5)  # 4 groups of 128 and a last one of 64 columns
    tail = rtn(w[:, 512:], bits=4, group_size=-1, sym=False)
    torch.testing.assert_close(q.scales[:, 4], tail.scales[:, 0])
    assert torch.equal(q.codes[:, 512:], tail.codes)
    err = (q.dequantize() - w).abs()
    assert float(err.max()) <= float(q.scales.max()) / 2 + 1e-6  # round to nearest: within half a step


def _layer(seed=0, n=32, k=96, tokens=512):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(tokens, k, generator=g) @ mix  # correlated inputs
    x[:, 5] = 0  # a dead input
    return w, x, 2 * x.t() @ x / tokens


def _out_err(w, x, wq):
    return float(((w - wq) @ x.t()).pow(2).sum())


@pytest.mark.parametrize(
    "cfg",
    [
        GPTQConfig(bits=4, group_size=-1),
        GPTQConfig(bits=3, group_size=32),
        GPTQConfig(bits=4, group_size=32, sym=True),
        GPTQConfig(bits=3, group_size=32, act_order=True, static_groups=True),
        GPTQConfig(bits=2, group_size=-1, act_order=True),
        GPTQConfig(bits=4, group_size=64, blocksize=32),  # K=96 with g64: a partial group of 32
    ],
)
def test_gptq_reconstruction_error_below_rtn(cfg):
    w, x, h = _layer()
    q, loss = gptq_quantize(w, h, cfg)
    r = rtn(w, cfg.bits, cfg.group_size, cfg.sym)
    wq = q.dequantize()
    assert torch.all(wq[:, 5] == q.scales.repeat_interleave(cfg.group_size if cfg.group_size > 0 else 96, 1)[:, 5] * (q.codes[:, 5] - q.zeros.repeat_interleave(cfg.group_size if cfg.group_size > 0 else 96, 1)[:, 5]))
    assert _out_err(w, x, wq) < 0.9 * _out_err(w, x, r.dequantize())
    assert loss > 0
    # the packed module computes with the same weights
    mod = QuantLinear.from_codes(q.codes, q.scales, q.zeros, q.bits, q.group_size, layout="packed")
    torch.testing.assert_close(mod.dequantize(), wq)


def test_gptq_equals_rtn_when_inputs_are_uncorrelated():
    # diagonal H: H⁻¹'s Cholesky factor is diagonal, so no error is propagated
    w = torch.randn(16, 64)
    h = torch.diag(torch.rand(64) + 0.5)
    q, _ = gptq_quantize(w, h, GPTQConfig(bits=3, group_size=-1))
    assert torch.equal(q.codes, rtn(w, 3, -1, False).codes)


def test_gptq_config_validation():
    with pytest.raises(ConfigError):
        GPTQConfig(bits=5)
    with pytest.raises(ConfigError):
        GPTQConfig(act_order=True, group_size=128)
    with pytest.raises(ConfigError):
        GPTQConfig(percdamp=-0.1)


# -- AWQ, SmoothQuant, mixed precision ---------------------------------------------------------
from slimbench.methods.quant.awq import AWQ, AWQConfig  # noqa: E402
from slimbench.methods.quant.mixed_precision import assign_bits  # noqa: E402


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_scale_folding_preserves_the_float_block(tiny_bundle, model):
    """AWQ/SmoothQuant fold 1/s into the norm (Gemma's 1 + w included) or previous linear, s into the inputs."""
    bundle = tiny_bundle(model)
    adapter, block = bundle.adapter, bundle.adapter.get_blocks(bundle.model)[0]
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        before = bundle.model(ids).logits
        lin = adapter.block_linears(block)
        g = torch.Generator().manual_seed(0)
        for prev, roles in (("attn_in", ("q", "k", "v")), ("mlp_in", ("gate", "up")), ("up", ("down",))):
            k = adapter.weight_matrix(lin[roles[0]]).shape[1]
            s = torch.rand(k, generator=g) * 3 + 0.2
            AWQ._apply_scale(adapter, block, prev, [lin[r] for r in roles], s)
        after = bundle.model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_awq_clipping_never_increases_group_output_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    w[0, 3] = 12.0  # an outlier worth clipping
    x = torch.randn(600, 64, generator=g)
    method = AWQ(AWQConfig(bits=3, group_size=32))
    clipped = w.clone()
    method._clip(clipped, x)
    assert float(clipped.abs().max()) < 12.0
    from slimbench.methods.quant.awq import awq_quantize_weight

    def err(v):
        return float((x @ (awq_quantize_weight(v, 3, 32) - w).t()).pow(2).sum())

    assert err(clipped) <= err(w)


def test_mixed_precision_bisection_meets_the_target():
    cost = {"a": 0.1, "b": 5.0, "c": 0.3, "d": 2.0}
    sizes = {"a": 100, "b": 100, "c": 300, "d": 100}
    bits, k = assign_bits(cost, sizes, 3, 4, 3.5)
    # least sensitive first: a (100), c (300) -> 400 of 600 weights at 3 bits = 3.33 <= 3.5; a alone = 3.83
    assert k == 2 and bits == {"a": 3, "c": 3, "d": 4, "b": 4}
    assert assign_bits(cost, sizes, 3, 4, 4.0)[1] == 0
    assert all(b == 3 for b in assign_bits(cost, sizes, 3, 4, 3.0)[0].values())


def test_smoothquant_and_awq_reject_unsupported_layouts():
    from slimbench.methods.quant.smoothquant import SmoothQuant, SmoothQuantConfig
    from slimbench.models.adapters import adapter_for

    with pytest.raises(ConfigError):
        AWQ(AWQConfig()).check(adapter_for("gpt2"))
    with pytest.raises(ConfigError):
        SmoothQuant(SmoothQuantConfig()).check(adapter_for("gpt2"))
    AWQ(AWQConfig()).check(adapter_for("gemma3_text"))
    SmoothQuant(SmoothQuantConfig()).check(adapter_for("opt"))


def test_budget_bisection_finds_the_last_k_within_the_budget():
    from slimbench.methods.quant.mixed_precision import largest_within_budget

    calls = []

    def within(k):
        calls.append(k)
        return k <= 13

    assert largest_within_budget(40, within) == (13, True)
    assert len(calls) <= 8  # 1 + ceil(log2(41)) evaluations, not a scan
    assert largest_within_budget(40, lambda k: True) == (40, True)
    assert largest_within_budget(40, lambda k: False) == (0, False)


def _calib(bundle, text_dir, n=4, seqlen=64):
    from slimbench.data.corpora import resolve_corpus
    from slimbench.data.sampler import CalibConfig, build_calibration_set

    ref = resolve_corpus("wikitext2", "validation", text_dir)
    return build_calibration_set(CalibConfig(nsamples=n, seqlen=seqlen, seed=0), ref, bundle.tokenizer)


def test_mixed_precision_ppl_budget_search_invariants(tiny_bundle, text_dir):
    """budget=ppl (the paper's criterion): the chosen k is within (1 + budget) x the unquantized
    perplexity, k + 1 was tried and is not, and the search leaves the weights untouched."""
    from slimbench.calibration import CalibrationEngine
    from slimbench.methods.quant.mixed_precision import MixedPrecision, MixedPrecisionConfig

    bundle = tiny_bundle("tiny-llama")
    calib = _calib(bundle, text_dir)
    cfg = MixedPrecisionConfig(budget="ppl", ppl_budget=0.01, bits_low=2, bits_high=8, target_bits=4,
                               group_size=32, quantizer="rtn", budget_samples=2)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    with torch.no_grad():  # the perplexity protocol's formula, written out: exp(mean of window mean NLLs)
        nll = [torch.nn.functional.cross_entropy(bundle.model(s["input_ids"]).logits[0, :-1], s["input_ids"][0, 1:]).item()
               for s in list(calib.samples())[:2]]
    reference = math.exp(sum(nll) / 2)
    cost = {f"model.layers.{i}.{p}": float(j + 7 * i) for i in range(2) for j, p in enumerate(bundle.adapter.linears.values())}
    bits, k, search = MixedPrecision(cfg)._search_budget(bundle, CalibrationEngine(bundle, calib, progress=False), cost)
    assert all(torch.equal(v, before[n]) for n, v in bundle.model.state_dict().items())  # restored
    assert search["ppl_unquantized"] == pytest.approx(reference) and search["ppl_limit"] == pytest.approx(1.01 * reference)
    assert search["met"] == (search["tried"]["0"] <= search["ppl_limit"])
    assert search["tried"][str(k)] <= search["ppl_limit"] or (k == 0 and not search["met"])
    if k < len(cost):  # bisection stops only once k + 1 has been shown to break the budget
        assert search["tried"][str(k + 1)] > search["ppl_limit"]
    assert sum(b == 2 for b in bits.values()) == k and set(bits.values()) <= {2, 8}

    result = MixedPrecision(cfg).apply(bundle, calib)
    assert result.details["budget"] == "ppl" and set(result.details["budget_search"]) >= {"tried", "met", "ppl_limit"}


def test_mixed_precision_ppl_budget_met_and_unmet(tiny_bundle, text_dir, monkeypatch):
    """With the perplexity made a known function of the low-bit layer count, the search lands
    on the exact boundary; an unreachable budget keeps every layer high and says so."""
    from slimbench.calibration import CalibrationEngine
    from slimbench.methods.quant import mixed_precision as mp

    bundle = tiny_bundle("tiny-llama")
    calib = _calib(bundle, text_dir)
    originals = {n: m.weight.detach().clone() for n, m in bundle.model.named_modules() if isinstance(m, torch.nn.Linear)}

    def fake_ppl(model, base=10.0, per_layer=0.1):  # +1% per linear whose weight was changed
        changed = sum(not torch.equal(m.weight, originals[n]) for n, m in model.named_modules() if n in originals)
        return base + per_layer * changed

    def objective_of(ppl):  # the engine's objective, made to give exp(mean) = ppl(model)
        return lambda engine, samples=None, backward=None, desc=None: torch.tensor([math.log(ppl(engine.bundle.model))], dtype=torch.float64)

    monkeypatch.setattr(CalibrationEngine, "objective", objective_of(fake_ppl))
    cfg = mp.MixedPrecisionConfig(budget="ppl", ppl_budget=0.055, bits_low=2, bits_high=8, target_bits=4,
                                  group_size=32, quantizer="rtn", budget_samples=1)
    # bits_high=8 changes every weight too (+1% each for 14 linears) -> the all-high model is already 14% off
    result = mp.MixedPrecision(cfg).apply(bundle, calib)
    assert result.details["layers_low"] == 0 and not result.details["budget_search"]["met"]
    assert any("budget not met" in n for n in result.notes)

    bundle = tiny_bundle("tiny-llama")
    originals = {n: m.weight.detach().clone() for n, m in bundle.model.named_modules() if isinstance(m, torch.nn.Linear)}

    def low_count_ppl(model):  # +1% per linear at 2 bits (relative error ~10%, vs ~0.1% at 8 bits)
        def rel_err(n, m):
            return float((m.weight - originals[n]).abs().mean() / originals[n].abs().mean())

        count = sum(rel_err(n, m) > 0.02 for n, m in model.named_modules() if n in originals)
        return 10.0 * (1 + 0.01 * count)

    monkeypatch.setattr(CalibrationEngine, "objective", objective_of(low_count_ppl))
    result = mp.MixedPrecision(cfg).apply(bundle, calib)
    assert result.details["budget_search"]["met"] and result.details["layers_low"] == 5  # 5% <= 5.5% < 6%
@pytest.mark.parametrize("kwargs", [{"budget": "accuracy"}, {"ppl_budget": 0.0}, {"budget_samples": 0}])
def test_mixed_precision_budget_config_validation(kwargs):
    from slimbench.methods.quant.mixed_precision import MixedPrecisionConfig

    with pytest.raises(ConfigError):
        MixedPrecisionConfig(**kwargs)


def test_smoothing_lowers_the_w8a8_error_on_outlier_channels(tiny_bundle, text_dir):
    """SmoothQuant's claim on a tiny model with a few large activation channels (norm weights
    scaled by 40): migrating them into the weights beats plain W8A8 (smooth=false)."""
    from slimbench.methods.quant.smoothquant import SmoothQuant, SmoothQuantConfig

    calib = None  # one calibration set for both runs (same tokenizer)

    def logits_error(smooth: bool) -> float:
        nonlocal calib
        bundle = tiny_bundle("tiny-llama")
        with torch.no_grad():
            for block in bundle.adapter.get_blocks(bundle.model):
                for role in ("attn_in", "mlp_in"):
                    bundle.adapter.norm(block, role).weight[:4] *= 40
        calib = calib or _calib(bundle, text_dir)
        ids = calib.tokens[:1]
        with torch.no_grad():
            reference = bundle.model(ids).logits
            result = SmoothQuant(SmoothQuantConfig(smooth=smooth)).apply(bundle, calib)
            error = float((bundle.model(ids).logits - reference).pow(2).mean())
        assert result.execution_path == "int8-kernel" and bool(result.details["smoothing_scale_range"]) == smooth
        return error

    plain, smoothed = logits_error(False), logits_error(True)
    assert smoothed < 0.5 * plain
