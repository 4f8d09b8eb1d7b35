import json
import multiprocessing as mp

from slimbench.store import ResultStore


def _record(run_id, attempt, status="ok", **extra):
    return {"run_id": run_id, "attempt_id": attempt, "status": status, "schema_version": 2, "model": {"name": "m"},
            "method": {"name": "x", "stages": [{"name": "x", "config": {}}]}, **extra}


def _writer(root, worker):
    store = ResultStore(root)
    for i in range(25):
        store.write(_record(f"run{worker}-{i % 5}", f"a{worker}-{i:03d}", payload="x" * 5000))


def test_parallel_writers_never_corrupt_or_lose_records(tmp_path):
    procs = [mp.get_context("fork").Process(target=_writer, args=(tmp_path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    store = ResultStore(tmp_path)
    files = list(store.records_dir.glob("*.json"))
    assert len(files) == 100
    assert all(json.loads(f.read_text())["payload"] == "x" * 5000 for f in files)
    assert not list(store.records_dir.glob(".tmp-*"))
    assert len(store.latest()) == 20


def test_a_failed_rerun_never_hides_the_successful_record(tmp_path):
    store = ResultStore(tmp_path)
    store.write(_record("r1", "20260101T000000-aaaa", "ok"))
    store.write(_record("r1", "20260102T000000-bbbb", "failed"))
    assert store.completed("r1").attempt_id == "20260101T000000-aaaa"
    assert [r.status for r in store.latest()] == ["ok"]
    store.write(_record("r2", "20260103T000000-cccc", "failed"))
    assert store.completed("r2") is None
    assert {r.run_id: r.status for r in store.latest()} == {"r1": "ok", "r2": "failed"}


def test_lock_is_exclusive_across_processes(tmp_path):
    store = ResultStore(tmp_path)
    ctx = mp.get_context("fork")
    result = ctx.Queue()

    def try_lock():
        with ResultStore(tmp_path).lock("r1") as acquired:
            result.put(acquired)

    with store.lock("r1") as held:
        assert held
        p = ctx.Process(target=try_lock)
        p.start()
        p.join()
        assert result.get(timeout=5) is False
    with store.lock("r1") as again:
        assert again


def test_unreadable_record_is_skipped(tmp_path):
    store = ResultStore(tmp_path)
    store.write(_record("r1", "a1"))
    (store.records_dir / "broken__x.json").write_text("{not json")
    assert [r.run_id for r in store.records()] == ["r1"]


def _placeholder(run_id, pid, host):
    error = {"stage": "compress", "type": "Interrupted", "pid": pid, "host": host,
             "message": "the run did not finish: its process ended during compress (killed, out of memory, power loss?) or it is still running"}
    return _record(run_id, "20260101T000000-aaaa", "failed", error=error)


def test_a_running_placeholder_reads_as_running_not_failed(tmp_path):
    import os
    import socket

    from slimbench.leaderboard.aggregate import pool
    from slimbench.leaderboard.board import status
    from slimbench.store import flatten_record

    store = ResultStore(tmp_path)
    dead = mp.get_context("fork").Process(target=int)
    dead.start()
    dead.join()  # a pid that no longer runs
    store.write(_placeholder("live", os.getpid(), socket.gethostname()))
    store.write(_placeholder("dead", dead.pid, socket.gethostname()))
    store.write(_placeholder("elsewhere", os.getpid(), "another-host"))
    with store.lock("live"), store.lock("dead"), store.lock("elsewhere"):
        latest = {r.run_id: r for r in store.latest()}
        assert latest["live"].error["running"] is True
        assert latest["live"].error["message"] == f"running: reached compress (pid {os.getpid()} on {socket.gethostname()})"
        assert not latest["dead"].error.get("running") and not latest["elsewhere"].error.get("running")
        assert all(r.status == "failed" for r in latest.values())  # the record itself is unchanged
        rows = [flatten_record(r) for r in latest.values()]
        by_id = {c.first["run_id"]: status(c) for c in pool([{**row, "dtype": None, "group_fingerprint": None, "calibration_set": None,
                                                               "method_config": row["run_id"]} for row in rows])}
        assert by_id["live"].startswith("running: reached compress")
        assert by_id["dead"].startswith("failed: the run did not finish")
    # the lock released (the run ended without replacing its placeholder: killed): a failure again
    assert not any(r.error.get("running") for r in store.latest())
