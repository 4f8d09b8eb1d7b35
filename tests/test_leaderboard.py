from slimbench.leaderboard.tables import leaderboard_markdown


def _rec(run_id, method, params, prefill_ms, tok_s, nbytes, fp="p1"):
    metrics = [
        {"evaluator": "size", "name": "params", "value": params},
        {"evaluator": "size", "name": "bytes", "value": nbytes},
        {"evaluator": "latency", "name": "prefill_ms", "value": prefill_ms},
        {"evaluator": "latency", "name": "decode_tokens_per_s", "value": tok_s},
    ]
    return {"run_id": run_id, "attempt_id": "a", "status": "ok", "model": {"name": "m"},
            "method": {"name": method, "config": {}}, "eval": {"suite": "ppl"},
            "protocol_fingerprint": fp, "metrics": metrics}


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
        {**_rec("s", "flap", 800, 160.0, 36.0, 3_200_000),
         "compression": {"calibration": {"dataset": "wikitext2", "split": "validation", "nsamples": 128, "seqlen": 2048, "seed": 0}}},
        _rec("o", "wanda", 500, 100.0, 60.0, 2_000_000, fp="p2"),  # other protocol: no dense to compare
    ])
    flap, dense = _row(table, "flap"), _row(table, "dense")
    assert flap["params removed"] == "20.0%" and dense["params removed"] == "0.0%"
    assert flap["prefill × dense"] == "1.25" and flap["decode × dense"] == "1.20"
    assert flap["MB stored"] == "3.2"
    assert flap["calibration"] == "wikitext2/validation 128x2048 seed 0" and dense["calibration"] == "-"
    wanda = _row(table, "wanda")
    assert "prefill × dense" not in wanda and wanda["MB stored"] == "2.0"


def test_runs_that_read_cached_calibration_statistics_are_marked():
    cached = {**_rec("c", "flap", 800, 160.0, 36.0, 3_200_000),
              "compression": {"wall_time_s": 0.6, "peak_rss_bytes": 2**30,
                              "notes": ["calibration statistics read from the cache (stats-v1): wall time ..."]}}
    fresh = {**_rec("n", "numerical_pruning", 800, 160.0, 36.0, 3_200_000),
             "compression": {"wall_time_s": 505.0, "peak_rss_bytes": 2**31, "notes": []}}
    table = leaderboard_markdown([_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000), cached, fresh])
    assert _row(table, "flap")["compress s"] == "0.6*" and _row(table, "flap")["compress peak RSS MiB"] == "1024*"
    assert _row(table, "numerical_pruning")["compress s"] == "505.0"
    assert "\n\\* compression time and peak RSS without the calibration pass" in table
    plain = leaderboard_markdown([_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000), fresh])
    assert "*" not in plain


def test_configs_sort_by_numeric_value():
    recs = [_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000)]
    for n in (12, 4, 8):
        recs.append({**_rec(f"r{n}", "block_drop", 1000 - n, 200.0, 30.0, 4_000_000),
                     "method": {"name": "block_drop", "config": {"drop_n": n}}})
    lines = [l for l in leaderboard_markdown(recs).splitlines() if l.startswith("| block_drop")]
    assert [l.split("|")[2].strip() for l in lines] == ["drop_n=4", "drop_n=8", "drop_n=12"]
