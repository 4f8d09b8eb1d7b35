"""The bad-input table (tests/bad_inputs.py): each row exits 2 with one line naming the problem
(and a suggestion where one exists), before any weights load, in seconds, writing no record.

The rows run through ``slimbench.cli.main`` in this process (a loader that is reached raises,
so a row validation lets through fails fast). ``benchmarks/bad_inputs.py`` measures the same
table with weights allowed to load and counts the outcomes.
"""

import time
from pathlib import Path

import pytest

from tests.bad_inputs import CASES, make_fixtures, run_case

SECONDS = 20.0  # generous on a busy 2-core machine; a real run (load + evaluate) of tiny-llama takes longer than a pre-load error


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("bad-input-fixtures"))


def test_the_table_covers_every_config_group_with_at_least_60_rows():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.group for c in CASES} == {"method", "model", "eval", "calib", "tracker", "top", "data"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_before_weights_load(case, fixtures, tmp_path, monkeypatch):
    monkeypatch.delenv("SLIMBENCH_DATA_DIR", raising=False)
    monkeypatch.delenv("SLIMBENCH_RESULTS_DIR", raising=False)
    start = time.perf_counter()
    outcome = run_case(case, fixtures, tmp_path / "case")
    assert not outcome.loaded, f"weights loaded: {outcome.stderr[-2000:]}{outcome.stdout[-2000:]}"
    assert not outcome.traceback, outcome.escaped or (outcome.stdout + outcome.stderr)[-3000:]
    assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert case.expect in line, line
    if case.suggest:
        assert case.suggest in line, line
    assert outcome.records == []
    assert time.perf_counter() - start < SECONDS
