"""Leaderboard statistics: seeds pooled with t-intervals, speed ratios with their spread, the four
formats, Pareto fronts and plots (synthetic records: every expected number is computed by hand)."""

import csv
import json
import math

import pytest

from slimbench.leaderboard.aggregate import t_interval
from slimbench.leaderboard.board import build
from slimbench.leaderboard.pareto import Point, pareto_front, plot
from slimbench.leaderboard.render import to_html, to_json, to_markdown, write_csv
from slimbench.records import CompressionReport, Metric, RunRecord
from tests.test_leaderboard import _rec, _row

CAL = {"dataset": "wikitext2", "split": "validation", "nsamples": 32, "seqlen": 2048}


def _seeded(run_id, ppl, stderr, seed, nsamples=32, status="ok", method="wanda"):
    return _rec(run_id, method, 1000, 200.0, 30.0, 4_000_000, path="masked-dense", ppl=(ppl, stderr), seed=seed, status=status,
                config={"sparsity": 0.5}, calibration={**CAL, "nsamples": nsamples, "seed": seed})


def test_t_interval_matches_the_student_t_formula():
    st = t_interval([10.0, 11.0, 12.0])
    assert st.mean == 11.0 and st.n == 3
    assert st.ci95 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * s / sqrt(n)
    assert t_interval([5.0]).ci95 is None  # no interval from one run


def test_a_config_is_pooled_over_its_seeds_with_mean_ci_and_n():
    records = [_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000, ppl=(9.0, 0.05)),
               _seeded("w0", 10.0, 0.1, 0), _seeded("w1", 11.0, 0.2, 1), _seeded("w2", 12.0, 0.3, 2),
               _seeded("w3", 0.0, 0.0, 3, status="failed"),
               _seeded("big", 9.5, 0.1, 0, nsamples=128)]  # another calibration set: another config
    table = to_markdown(build(records))
    rows = [line for line in table.splitlines() if line.startswith("| wanda")]
    assert len(rows) == 2
    headers = [c.strip() for c in next(l for l in table.splitlines() if l.startswith("| method")).strip("|").split("|")]
    pooled = next(dict(zip(headers, [c.strip() for c in r.strip("|").split("|")])) for r in rows if "± " in r)
    assert pooled["n"] == "3" and pooled["seeds"] == "0,1,2" and pooled["status"] == "ok (1 failed)"
    assert pooled["ppl"] == f"11.000 ± {4.302653 / math.sqrt(3):.3f}"
    assert pooled["ppl stderr (windows)"] == "0.200"  # window-level stderr, averaged over the seeds
    assert pooled["calibration"] == "wikitext2/validation 32x2048"
    single = next(r for r in rows if "± " not in r)
    assert "9.500" in single and "wikitext2/validation 128x2048 seed 0" in single
    assert "mean ± 95% CI (Student t)" in table


def test_masked_dense_and_noisy_speed_ratios_are_not_shown_as_speedups():
    dense = _rec("d", "dense", 1000, 200.0, 30.0, 4_000_000)
    masked = _rec("m", "magnitude", 1000, 4.18, 30.0, 4_000_000, path="masked-dense")  # a noisy baseline: 47.9x
    noisy = _rec("s", "flap", 800, 190.0, 31.0, 3_200_000, spread=0.10)
    slow = _rec("q", "rtn", 1000, 300.0, 20.0, 1_000_000, path="int8-kernel", spread=0.01)
    table = to_markdown(build([dense, masked, noisy, slow]))
    assert _row(table, "magnitude")["prefill × dense"] == "not expected"
    assert _row(table, "flap")["prefill × dense"].startswith("≈1 (0.96–")  # 200/209 .. 210/190 covers 1.0
    assert _row(table, "rtn")["prefill × dense"] == f"0.67 (0.66–{210 / 300:.2f})"  # a measured slowdown stays visible
    assert "47.9" not in table


def test_the_board_is_written_as_markdown_csv_html_and_json(tmp_path):
    board = build([_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000, ppl=(9.0, 0.05)),
                   _seeded("w0", 10.0, 0.1, 0), _seeded("w1", 11.0, 0.2, 1), _seeded("w2", 12.0, 0.3, 2)])
    board.missing = ["method=gptq seed=0"]
    rows = list(csv.DictReader(open(write_csv(board, tmp_path / "b.csv"))))
    wanda = next(r for r in rows if r["method"] == "wanda")
    assert float(wanda["perplexity.perplexity"]) == 11.0 and int(wanda["n"]) == 3
    assert float(wanda["perplexity.perplexity.ci95"]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert wanda["vs_dense.prefill_speedup.verdict"] == "not expected" and wanda["run_ids"] == "w0;w1;w2"
    data = json.loads(to_json(board))
    config = next(c for c in data["groups"][0]["configs"] if c["method"] == "wanda")
    assert [r["calib_seed"] for r in config["runs"]] == [0, 1, 2] and data["missing"] == ["method=gptq seed=0"]
    page = to_html(board, images={"Pareto": "b.png"})
    assert "<table>" in page and "11.000 ± 2.484" in page and "<img src='b.png'" in page and "method=gptq seed=0" in page
    assert "not run yet: 1 job(s)" in to_markdown(board)


def test_protocols_that_differ_only_in_a_sampling_seed_pool_and_other_fields_do_not():
    def fid(run_id, seed, samples=100):
        proto = {"fid": {"fingerprint": f"{seed}-{samples}", "seed": seed, "num_samples": samples}}
        return RunRecord(run_id=run_id, attempt_id="a", status="ok", model={"name": "dit"}, config={"seed": seed},
                         method={"name": "dense", "stages": [{"name": "dense", "config": {}}]}, eval={"suite": "fid"},
                         protocol_fingerprint=f"{seed}-{samples}", protocols=proto,
                         metrics=[Metric("fid_clf", 10.0 + seed, evaluator="fid")],
                         compression=CompressionReport(method="dense", execution_path="dense", baseline=True))

    board = build([fid("a", 0), fid("b", 1), fid("c", 0, samples=200)])
    assert len(board.groups) == 2
    pooled = next(g for g in board.groups if len(g.configs[0].runs) == 2)
    assert pooled.configs[0].stat("fid.fid_clf").mean == 10.5


def test_pareto_front_keeps_the_configs_nothing_beats_on_both_axes():
    pts = [Point("a", 1.0, 30.0, None, None, None), Point("b", 2.0, 20.0, None, None, None),
           Point("c", 3.0, 25.0, None, None, None), Point("d", 4.0, 10.0, None, None, None)]
    pareto_front(pts, higher_is_better=False)
    assert [p.label for p in pts if p.on_front] == ["a", "b", "d"]
    acc = [Point("a", 1.0, 0.3, None, None, None), Point("b", 2.0, 0.2, None, None, None), Point("c", 3.0, 0.5, None, None, None)]
    pareto_front(acc, higher_is_better=True)
    assert [p.label for p in acc if p.on_front] == ["a", "c"]


def test_pareto_plots_are_written_per_protocol_group(tmp_path):
    recs = [_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000, ppl=(9.0, 0.05)), _seeded("w0", 10.0, 0.1, 0),
            _seeded("w1", 11.0, 0.2, 1), _rec("f", "flap", 800, 160.0, 36.0, 3_200_000, ppl=(12.0, 0.1), config={"ratio": 0.2})]
    for r in recs:
        lin = 2_000_000 if r.method_name == "flap" else 3_000_000
        r.metrics += [Metric("linear_bytes", lin, evaluator="size"), Metric("decode_ms_per_token", 1000 / r.metric("latency", "decode_tokens_per_s"), evaluator="latency")]
    board = build(recs)
    path = plot(board, "bytes", tmp_path / "p.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot(board, "latency", tmp_path / "l.png") is not None
    assert plot(build([]), "bytes", tmp_path / "none.png") is None


@pytest.mark.slow  # the W&B service starts and writes asynchronously
def test_the_leaderboard_and_its_plots_are_logged_to_wandb_offline(tmp_path):
    import time

    from slimbench.leaderboard.report import log_wandb
    from tests.test_tracking import _logged_items

    recs = [_rec("d", "dense", 1000, 200.0, 30.0, 4_000_000, ppl=(9.0, 0.05)), _seeded("w0", 10.0, 0.1, 0), _seeded("w1", 11.0, 0.2, 1)]
    for r in recs:
        r.metrics.append(Metric("linear_bytes", 3_000_000, evaluator="size"))
    board = build(recs)
    png = plot(board, "bytes", tmp_path / "b-pareto-bytes.png")
    log_wandb(board, "b", [png], str(tmp_path))
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    deadline = time.monotonic() + 60
    while True:
        items, exit_codes = _logged_items(run_dir)
        if exit_codes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert items["leaderboard/b/_type"] == "table-file" and items["leaderboard/b/nrows"] == 2  # one row per config
    assert items["leaderboard/b-pareto-bytes/_type"] == "image-file" and exit_codes == [0]
