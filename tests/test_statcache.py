"""The calibration-statistics cache: exact round trips, and nothing on disk ever runs as code."""

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from slimbench import statcache
from slimbench.calibration import CalibrationEngine, InputStats, LinearInputs
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.methods.layerdrop.common import BlockIOCosines, SublayerCosine
from slimbench.models.adapters import get_path


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"stats": _Payload(marker)})


@pytest.fixture
def engine_for(tiny_bundle, text_dir, tmp_path):
    def make(name="tiny-llama"):
        bundle = tiny_bundle(name)
        ref = resolve_corpus("wikitext2", "validation", text_dir)
        calib = build_calibration_set(CalibConfig(nsamples=3, seqlen=32, seed=0), ref, bundle.tokenizer)
        calib.cache_dir = tmp_path / "cache"
        return bundle, calib, lambda: CalibrationEngine(bundle, calib, progress=False)

    return make


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.numel() else t


def _same(a, b) -> None:
    """Bitwise equality of nested results (tensors: dtype, shape, bits; floats: exact)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
        assert torch.equal(_bits(a), _bits(b))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, InputStats):
        for f in ("wanted", "tokens", "gram", "sq_sum", "abs_sum", "abs_max", "sum"):
            _same(getattr(a, f), getattr(b, f))
    else:
        assert a == b or (a != a and b != b)  # NaN == NaN here


ALL_STATS = {"gram", "sq_sum", "abs_sum", "abs_max", "sum"}


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_every_observer_result_round_trips_bitwise(engine_for, model, monkeypatch):
    bundle, calib, engine = engine_for(model)
    roles = tuple(bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0]))

    def observers(i, block):
        return {"in": LinearInputs(roles, ALL_STATS), "cos": BlockIOCosines(), "attn": SublayerCosine("attn"),
                "bi": BlockIOCosines(final_norm=get_path(bundle.model, bundle.adapter.final_norm))}

    computed = engine().collect(observers, cache_key="all")
    monkeypatch.setattr(CalibrationEngine, "run", lambda *a, **k: pytest.fail("recomputed instead of read from the cache"))
    cached = engine().collect(observers, cache_key="all")
    _same(computed, cached)
    assert calib.cache_reads == ["all"]
    # q, k and v share one InputStats (one hook on their common input): the cache keeps the sharing
    assert cached[0]["in"]["q"] is cached[0]["in"]["k"] and computed[0]["in"]["q"] is computed[0]["in"]["k"]


def test_cached_results_of_any_structure_round_trip_exactly(engine_for):
    _, _, engine = engine_for()
    value = {
        "table": {"layer.0": {0.4: 123.456789012345, 0.5: float("inf")}, "layer.1": {0.9: float("nan")}},  # ASVD's float keys
        "fisher": {"a": torch.randn(7, dtype=torch.float64), "b": torch.randn(3, 4).t()},  # a non-contiguous view
        "ints": (1, -2, 2**40), "flags": [True, False, None], "text": "x", "empty": torch.empty(0, 3),
        "half": torch.randn(5).to(torch.bfloat16), "mask": torch.tensor([True, False]),
    }
    engine().cached("k", lambda: value)
    got = engine().cached("k", lambda: pytest.fail("recomputed"))
    _same(value, got)


def _entry(engine, key):
    return engine()._cache_dir(key)


def _fill(engine, key="s"):
    obs = lambda i, b: {"in": LinearInputs(["down"], {"sq_sum"})}  # noqa: E731
    return obs, engine().collect(obs, cache_key=key)


def test_a_planted_pickle_is_refused_removed_and_never_executed(engine_for, tmp_path, caplog):
    _, calib, engine = engine_for()
    obs, computed = _fill(engine)
    entry = _entry(engine, "s")
    marker = tmp_path / "pwned"
    for name in ("block0.pt", "result.pt"):  # where slimbench <= core v2 kept its pickles
        (entry / name).write_bytes(_pickle_bytes(marker))
    with caplog.at_level(logging.WARNING):
        again = engine().collect(obs, cache_key="s")
    assert not marker.exists()
    assert "a pickle, which could run code" in caplog.text
    assert not (entry / "block0.pt").exists()
    _same(computed, again)


@pytest.mark.parametrize("attack", ["tensor-file-replaced", "sidecar-rehashed", "bytes-flipped", "unknown-type", "key-swapped"])
def test_a_damaged_or_edited_entry_is_refused_with_the_reason_and_recomputed(engine_for, tmp_path, caplog, attack):
    _, calib, engine = engine_for()
    obs, computed = _fill(engine)
    entry = _entry(engine, "s")
    sidecar_path = entry / statcache.SIDECAR
    sidecar = json.loads(sidecar_path.read_text())
    tensor_file = entry / sidecar["tensor_file"]
    marker = tmp_path / "pwned"
    if attack == "tensor-file-replaced":
        tensor_file.write_bytes(_pickle_bytes(marker))
        reason = "does not match the sha256"
    elif attack == "sidecar-rehashed":  # someone rewrites the checksum too: safetensors still cannot run code
        tensor_file.write_bytes(_pickle_bytes(marker))
        sidecar.update(tensors_sha256=statcache._sha256(tensor_file), tensors_bytes=tensor_file.stat().st_size)
        sidecar_path.write_text(json.dumps(sidecar))
        reason = "not a readable safetensors file"
    elif attack == "bytes-flipped":
        data = bytearray(tensor_file.read_bytes())
        data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
        tensor_file.write_bytes(bytes(data))
        reason = "does not match the sha256"
    elif attack == "unknown-type":
        sidecar["tree"] = {"$object": "posix.system", "id": "o0", "fields": {"command": "touch " + str(marker)}}
        sidecar_path.write_text(json.dumps(sidecar))
        reason = "unknown node"
    else:
        sidecar["key"] = "other"
        sidecar_path.write_text(json.dumps(sidecar))
        reason = "holds 'other'"
    calib.cache_reads.clear()
    with caplog.at_level(logging.WARNING):
        again = engine().collect(obs, cache_key="s")
    assert not marker.exists()
    assert "refused" in caplog.text and reason in caplog.text, caplog.text
    assert calib.cache_reads == []  # recomputed, and the record will not claim a cache hit
    _same(computed, again)
    assert statcache.load(entry, "s") is not None  # the recomputed entry replaced the bad one


def test_a_value_of_an_unregistered_type_is_not_cached(engine_for, caplog):
    _, _, engine = engine_for()

    class Opaque:
        pass

    with caplog.at_level(logging.WARNING):
        engine().cached("o", lambda: {"x": Opaque()})
    assert "not cached" in caplog.text
    assert not (_entry(engine, "o") / statcache.SIDECAR).exists()


def test_the_cache_stays_inside_the_cache_dir_whatever_the_model_name(engine_for):
    from dataclasses import replace

    bundle, calib, engine = engine_for()
    bundle.source = replace(bundle.source, name="../../escape")
    entry = _entry(engine, "s")
    root = (calib.cache_dir / "calib_stats").resolve()
    assert entry.resolve().parent == root
