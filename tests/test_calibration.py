"""The layer-wise calibration engine on tiny models."""

import math

import pytest
import torch

from slimbench.calibration import CalibrationEngine, LinearInputs, Step, capture_block_inputs
from slimbench.methods.layerdrop.common import BlockIOCosines
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set


@pytest.fixture
def calib_for(text_dir):
    def make(bundle, nsamples=3, seqlen=32, cache_dir=None):
        ref = resolve_corpus("wikitext2", "validation", text_dir)
        calib = build_calibration_set(CalibConfig(nsamples=nsamples, seqlen=seqlen, seed=0), ref, bundle.tokenizer)
        calib.cache_dir = cache_dir
        return calib

    return make


def _block_inputs_by_hooks(bundle, calib):
    """Reference: the input of every block for every sample, from a plain full forward."""
    seen = {}
    blocks = bundle.adapter.get_blocks(bundle.model)
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].clone())) for i, b in enumerate(blocks)]
    norm = bundle.model.model.norm  # reference only: the final norm's input = last block's output
    handles.append(norm.register_forward_pre_hook(lambda m, a: seen.setdefault("final", []).append(a[0].clone())))
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_engine_without_compression_reproduces_the_model(tiny_bundle, calib_for, model):
    bundle = tiny_bundle(model)
    calib = calib_for(bundle)
    reference = _block_inputs_by_hooks(bundle, calib)
    captured = capture_block_inputs(bundle, calib, torch.device("cpu"))
    for s in range(3):
        assert torch.equal(captured.hidden[s], reference[0][s])

    seen = {}

    def plan(i, block):
        obs = {"io": _Recorder(seen, i)}
        return [Step(obs)]

    CalibrationEngine(bundle, calib, progress=False).run(plan, propagate_error=True)
    blocks = len(bundle.adapter.get_blocks(bundle.model))
    for i in range(blocks):
        nxt = reference[i + 1] if i + 1 < blocks else reference["final"]
        for s in range(3):
            torch.testing.assert_close(seen[i][s], nxt[s], rtol=1e-5, atol=1e-5)


class _Recorder:
    def __init__(self, sink, index):
        self.sink, self.index = sink, index

    def attach(self, block, adapter, hooks):
        pass

    def on_block_io(self, inp, out):
        self.sink.setdefault(self.index, []).append(out.clone())

    def result(self):
        return None


def test_offload_moves_one_block_at_a_time_to_the_compute_device(tiny_bundle, calib_for, monkeypatch):
    """bundle.compute_device (offload=true): each block goes to the compute device for its steps and
    back to the weights' device before the next one moves; what is captured lives on the compute device.
    (CPU-only check of the order of moves; tests/test_gpu.py checks offloaded results on CUDA.)"""
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    blocks = list(bundle.adapter.get_blocks(bundle.model))
    moves, active = [], set()
    real_to = torch.nn.Module.to

    def spy(module, *args, **kwargs):
        if any(module is b for b in blocks):
            index = next(i for i, b in enumerate(blocks) if module is b)
            target = str(args[0] if args else kwargs.get("device"))
            moves.append((index, target))
            (active.discard if target == "cpu" and index in active else active.add)(index)
            assert len(active) <= 1, f"blocks {sorted(active)} on the compute device at once"
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    bundle.compute_device = "cpu:0"  # a distinct spelling of the same device: the moves are observable, the numbers unchanged
    seen = {}
    CalibrationEngine(bundle, calib, progress=False).run(lambda i, block: [Step({"io": _Recorder(seen, i)})], propagate_error=True)
    assert moves == [(i, t) for i in range(len(blocks)) for t in ("cpu:0", "cpu")]
    bundle.compute_device = None
    reference = {}
    CalibrationEngine(bundle, calib, progress=False).run(lambda i, block: [Step({"io": _Recorder(reference, i)})], propagate_error=True)
    assert all(torch.equal(a, b) for i in seen for a, b in zip(seen[i], reference[i]))


def test_gemma3_blocks_get_their_own_masks(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-gemma3")
    captured = capture_block_inputs(bundle, calib_for(bundle), torch.device("cpu"))
    sliding, full = captured.calls[0][0][1], captured.calls[2][0][1]
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])  # different rope bases
    # equal tensors are stored once across samples
    assert captured.calls[0][0][1]["position_embeddings"][0] is captured.calls[0][1][1]["position_embeddings"][0]


def test_input_statistics_match_a_direct_computation(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    xs = []
    q0 = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["q"]
    handle = q0.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1]).clone()))
    with torch.no_grad():
        for sample in calib.samples():
            bundle.model(**sample)
    handle.remove()
    x = torch.cat(xs)

    stats = CalibrationEngine(bundle, calib, progress=False).collect(
        lambda i, block: {"in": LinearInputs(["q", "k", "gate"], {"gram", "hessian", "sq_sum", "abs_sum", "abs_max", "sum"})}
    )
    s = stats[0]["in"]["q"]
    assert s is stats[0]["in"]["k"] and s is not stats[0]["in"]["gate"]  # q/k share one input
    assert s.tokens == x.shape[0] == 3 * 32
    torch.testing.assert_close(s.gram, x.t() @ x, rtol=1e-5, atol=1e-4)
    assert s.samples == 3  # the Hessian averages over samples (windows), as the SparseGPT/GPTQ references
    torch.testing.assert_close(s.hessian.double(), (x.double().t() @ x.double()) * (2 / 3), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s.col_norm.float(), x.norm(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.mean_abs.float(), x.abs().mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.abs_max, x.abs().amax(0))
    torch.testing.assert_close(s.variance.float(), x.var(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_block_cosine_is_one_minus_block_influence(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    reference = _block_inputs_by_hooks(bundle, calib)
    stats = CalibrationEngine(bundle, calib, progress=False).collect(lambda i, block: {"cos": BlockIOCosines()})
    x_in, x_out = torch.cat(reference[0]), torch.cat(reference[1])
    expected = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1).mean().item()
    assert stats[0]["cos"]["cos"] == pytest.approx(expected, abs=1e-6)


def test_compression_propagates_to_later_blocks(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    stats_seen = []

    def plan(i, block):
        def compress(stats):
            stats_seen.append(stats["in"]["q"].gram.clone())
            for lin in bundle.adapter.block_linears(block).values():
                lin.weight.data.mul_(0.5)
            return {f"block{i}": "halved"}

        return [Step({"in": LinearInputs(["q"], {"gram"})}, compress)]

    dense_stats = CalibrationEngine(bundle, calib, progress=False).collect(lambda i, b: {"in": LinearInputs(["q"], {"gram"})})
    report = CalibrationEngine(bundle, calib, progress=False).run(plan, propagate_error=True)
    assert report.details == [{"block0": "halved"}, {"block1": "halved"}]
    torch.testing.assert_close(stats_seen[0], dense_stats[0]["in"]["q"].gram)  # block 0 sees dense inputs
    assert not torch.allclose(stats_seen[1], dense_stats[1]["in"]["q"].gram)  # block 1 sees compressed ones


def test_input_only_steps_stop_the_block_early(tiny_bundle, calib_for):
    """With the output not needed, a q/k/v step never runs the MLP; statistics are unchanged."""
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    down_calls: list[int] = []
    grams = []

    def plan(i, block):
        down = bundle.adapter.block_linears(block)["down"]
        steps = []
        for roles in (["q"], ["gate"], ["down"]):
            def compress(stats, roles=roles, down=down):
                grams.append(stats["in"][roles[0]].gram.clone())
                down_calls.append(counter.pop(down, 0))
            steps.append(Step({"in": LinearInputs(roles, {"gram"})}, compress))
        return steps

    counter: dict = {}
    handles = [bundle.adapter.block_linears(b)["down"].register_forward_pre_hook(lambda m, a: counter.__setitem__(m, counter.get(m, 0) + 1))
               for b in bundle.adapter.get_blocks(bundle.model)]
    CalibrationEngine(bundle, calib, progress=False).run(plan, propagate_error=True)
    for h in handles:
        h.remove()
    assert down_calls[:3] == [0, 0, 3]  # block 0: q step, gate step (stopped), down step (its input seen: 3 samples)
    dense = CalibrationEngine(bundle, calib, progress=False).collect(lambda i, b: {"in": LinearInputs(["q", "gate", "down"], {"gram"})})
    for got, role in zip(grams[:3], ["q", "gate", "down"]):
        torch.testing.assert_close(got, dense[0]["in"][role].gram)  # block 0 saw the dense model


def test_collect_is_cached_by_model_calibration_and_key(tiny_bundle, calib_for, tmp_path, monkeypatch):
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle, cache_dir=tmp_path)
    obs = lambda i, b: {"in": LinearInputs(["down"], {"sq_sum"})}  # noqa: E731
    first = CalibrationEngine(bundle, calib, progress=False).collect(obs, cache_key="down-sq")
    assert calib.cache_reads == []  # computed, not read
    monkeypatch.setattr(CalibrationEngine, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    second = CalibrationEngine(bundle, calib, progress=False).collect(obs, cache_key="down-sq")
    assert torch.equal(first[1]["in"]["down"].sq_sum, second[1]["in"]["down"].sq_sum)
    assert calib.cache_reads == ["down-sq"]  # the record says the statistics came from the cache
    with pytest.raises(AssertionError, match="recomputed"):
        CalibrationEngine(bundle, calib, progress=False).collect(obs, cache_key="other-key")


def test_observer_hooks_are_gone_after_each_pass(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-llama")
    CalibrationEngine(bundle, calib_for(bundle), progress=False).collect(lambda i, b: {"in": LinearInputs(["q", "down"], {"sq_sum"})})
    assert len(bundle.hooks) == 0
    assert all("forward" not in m.__dict__ for m in bundle.model.modules())  # every wrapped forward restored


def test_engine_objective_is_the_mean_token_nll_of_each_window(tiny_bundle, calib_for):
    bundle = tiny_bundle("tiny-llama")
    calib = calib_for(bundle)
    got = CalibrationEngine(bundle, calib, progress=False).objective()
    with torch.no_grad():
        for i, sample in enumerate(calib.samples()):
            ids = sample["input_ids"]
            logits = bundle.model(ids).logits[0, :-1]
            expected = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
            assert got[i].item() == pytest.approx(expected, rel=1e-6)


def test_diffusion_calibration_samples_follow_the_sampling_trajectory(tiny_bundle):
    """Kind-neutral engine: a DiT's calibration samples are (x_t, t, y) denoiser calls."""
    from slimbench.data.sampler import TrajectoryCalibConfig, build_trajectory_set

    bundle = tiny_bundle("tiny-dit")
    calib = build_trajectory_set(TrajectoryCalibConfig(nsamples=3, steps=4, seed=0), bundle)
    assert len(calib) == 4 and set(calib.inputs[0]) == {"x", "t", "y"}
    ts = [int(s["t"][0]) for s in calib.samples()]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == 4  # a denoising run: t decreases
    assert not torch.equal(calib.inputs[0]["x"], calib.inputs[1]["x"])  # x_t moves along the trajectory
    stats = CalibrationEngine(bundle, calib, progress=False).collect(lambda i, b: {"in": LinearInputs(["q", "up"], {"sq_sum"})})
    assert stats[0]["in"]["q"].tokens == 4 * 3 * 4  # steps x images x patches (8x8 image, patch 4)


def test_hessian_is_the_references_running_mean_over_samples():
    """InputStats.hessian = 2/n Σ XᵀX over n samples whatever the call sizes; the running mean's float32 rounding
    differs from the one-sum-then-scale of ``gram`` (issue 27: GPTQ at 3 bits moves weights on such differences)."""
    from slimbench.calibration import InputStats

    torch.manual_seed(0)
    calls = [torch.randn(1, 64, 24) * 3, torch.randn(2, 64, 24), torch.randn(64, 24) + 1]  # [B, T, D] and one sample's [T, D]
    stats = InputStats(frozenset({"hessian", "gram"}))
    for x in calls:
        stats.update(x)
    x = torch.cat([c.reshape(-1, 24) for c in calls]).double()
    assert stats.samples == 4 and stats.tokens == 4 * 64
    exact = x.t() @ x * (2 / 4)
    torch.testing.assert_close(stats.hessian.double(), exact, rtol=1e-5, atol=1e-4)
    by_gram = stats.gram * (2 / 4)
    assert not torch.equal(stats.hessian, by_gram)  # same quantity, another float32 operation order
    h = torch.zeros(24, 24)  # the update order itself: rescale by n/(n+b), then add the pre-scaled batch
    n = 0
    for c in calls:
        b = c.shape[0] if c.dim() == 3 else 1
        h *= n / (n + b)
        n += b
        xt = math.sqrt(2 / n) * c.reshape(-1, 24).float().t()
        h += xt.matmul(xt.t())
    assert torch.equal(stats.hessian, h)
