from dataclasses import replace

from slimbench.leaderboard.tables import leaderboard_markdown
from slimbench.records import CompressionReport, Metric, RunRecord


def _rec(run_id, method, params, prefill_ms, tok_s, nbytes, fp="p1", config=None, latency_fp="l1", spread=0.05, path=None,
         ppl=None, seed=0, status="ok", **compression):
    metrics = [
        Metric("params", params, evaluator="size"),
        Metric("bytes", nbytes, evaluator="size"),
        Metric("prefill_ms", prefill_ms, evaluator="latency"),
        Metric("prefill_ms_p90", prefill_ms * (1 + spread), evaluator="latency"),
        Metric("decode_tokens_per_s", tok_s, evaluator="latency"),
        Metric("decode_tokens_per_s_p10", tok_s * (1 - spread), evaluator="latency"),
    ]
    if ppl is not None:
        metrics.append(Metric("perplexity", ppl[0], stderr=ppl[1], evaluator="perplexity"))
    dense = method == "dense"
    path = path or ("dense" if dense else "sliced-dense")
    compression.setdefault("speedup_expected", path not in ("dense", "masked-dense", "simulated"))
    comp = CompressionReport(method=method, execution_path=path, baseline=dense, **compression)
    return RunRecord(run_id=run_id, attempt_id="a", status=status, model={"name": "m"}, config={"seed": seed},
                     method={"name": method, "stages": [{"name": method, "config": config or {}}]}, eval={"suite": "ppl"},
                     protocol_fingerprint=fp, protocols={"latency": {"fingerprint": latency_fp}}, metrics=metrics, compression=comp)


def _row(table, method):
    lines = table.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith(f"| {method} "))
    header = next(l for l in reversed(lines[:at]) if l.startswith("| method"))  # this row's own table
    cells = [c.strip() for c in header.strip("|").split("|")]
    row = lines[at]
    return dict(zip(cells, [c.strip() for c in row.strip("|").split("|")]))


def test_rows_are_compared_with_the_dense_run_of_their_own_protocol_group():
    table = leaderboard_markdown([
        _rec("d", "dense", 1000, 200.0, 30.0, 4_000_000),
        _rec("s", "flap", 800, 160.0, 36.0, 3_200_000,
             calibration={"dataset": "wikitext2", "split": "validation", "nsamples": 128, "seqlen": 2048, "seed": 0}),
        _rec("o", "wanda", 500, 100.0, 60.0, 2_000_000, fp="p2"),  # other protocol: no dense to compare
    ])
    flap, dense = _row(table, "flap"), _row(table, "dense")
    assert flap["params removed"] == "20.0%" and dense["params removed"] == "0.0%"
    # ratio (method at its slow end / dense's median – dense at its slow end / method's median)
    assert flap["prefill × dense"] == "1.25 (1.19–1.31)" and flap["decode × dense"] == "1.20 (1.14–1.26)"
    assert dense["prefill × dense"] == "≈1 (0.95–1.05)"  # the baseline's own spread
    assert flap["MB stored"] == "3.2"
    assert flap["calibration"] == "wikitext2/validation 128x2048 seed 0" and dense["calibration"] == "-"
    wanda = _row(table, "wanda")
    assert "prefill × dense" not in wanda and wanda["MB stored"] == "2.0"


def test_speedups_are_only_against_a_baseline_of_the_same_latency_protocol():
    """Perplexity tables ignore the thread count, speed ratios do not: a run timed with other
    threads shares the table but gets no ratio against a baseline timed differently."""
    table = leaderboard_markdown([
        _rec("d", "dense", 1000, 200.0, 30.0, 4_000_000),
        _rec("s", "flap", 800, 160.0, 36.0, 3_200_000, latency_fp="l-1-thread"),
    ])
    flap = _row(table, "flap")
    assert flap["params removed"] == "20.0%" and flap["prefill × dense"] == "-" and flap["decode × dense"] == "-"


def test_runs_that_read_cached_calibration_statistics_are_marked():
    cached = _rec("c", "flap", 800, 160.0, 36.0, 3_200_000, wall_time_s=0.6, peak_rss_bytes=2**30, calibration_cache_hits=["stats-v1"])
    fresh = _rec("n", "numerical_pruning", 800, 160.0, 36.0, 3_200_000, wall_time_s=505.0, peak_rss_bytes=2**31)
    table = leaderboard_markdown([_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000), cached, fresh])
    assert _row(table, "flap")["compress s"] == "0.6*" and _row(table, "flap")["compress peak RSS MiB"] == "1024*"
    assert _row(table, "numerical_pruning")["compress s"] == "505.0"
    assert "\n\\* compression time and peak RSS without the calibration pass" in table
    plain = leaderboard_markdown([_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000), fresh])
    assert "*" not in plain


def test_configs_sort_by_numeric_value():
    recs = [_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000)]
    for n in (12, 4, 8):
        recs.append(_rec(f"r{n}", "block_drop", 1000 - n, 200.0, 30.0, 4_000_000, config={"drop_n": n}))
    lines = [l for l in leaderboard_markdown(recs).splitlines() if l.startswith("| block_drop")]
    assert [l.split("|")[2].strip() for l in lines] == ["drop_n=4", "drop_n=8", "drop_n=12"]


def test_version_1_records_are_read_and_upgraded():
    v1 = {"run_id": "x", "attempt_id": "a", "status": "ok", "model": {"name": "m"}, "schema_version": 1,
          "method": {"name": "flap", "config": {"ratio": 0.2}, "ignored_parameters": {}}, "eval": {"suite": "ppl"},
          "protocol": {"dtype": "float32", "device": "cpu", "threads": 2, "perplexity": {"version": "1", "seqlen": 2048},
                       "latency": {"version": "1", "repeats": 5}},
          "compression": {"method": "flap", "execution_path": "sliced-dense", "wall_time_s": 3.0,
                          "notes": ["calibration statistics read from the cache (stats-v1, other): wall time ..."], "details": {"a": 1}},
          "metrics": [{"evaluator": "perplexity", "name": "perplexity", "value": 21.5, "stderr": 0.3}]}
    rec = RunRecord.from_dict(v1)
    assert rec.schema_version == 2 and rec.method_name == "flap" and rec.stages[0]["config"] == {"ratio": 0.2}
    assert rec.compression.calibration_cache_hits == ["stats-v1", "other"] and not rec.compression.baseline
    assert rec.compression.stages[0].details == {"a": 1}
    assert rec.protocols["perplexity"]["seqlen"] == 2048 and "threads" not in rec.protocols["perplexity"]
    assert rec.protocols["latency"]["threads"] == 2  # only latency's protocol holds the machine settings
    assert rec.metric("perplexity", "perplexity") == 21.5 and rec.metric_entry("perplexity", "perplexity").stderr == 0.3
