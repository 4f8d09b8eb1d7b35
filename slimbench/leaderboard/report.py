"""``slimbench leaderboard``: select records, build the board, write every format and the plots.

    slimbench leaderboard                                   # Markdown on stdout + <results-dir>/leaderboard.csv
    slimbench leaderboard --experiment budget               # only that experiment's runs (its grid, expanded)
    slimbench leaderboard --experiment budget --out results/leaderboards --name budget-smollm2-135m
        # -> <name>.md .csv .html .json, <name>-pareto-bytes.png, <name>-pareto-latency.png
    slimbench leaderboard --experiment seeds model=tiny-llama   # the experiment as run with these overrides
    slimbench leaderboard ... --wandb                       # also log the table and plots to W&B (offline)

With ``--experiment`` the records are those whose run_id one of the experiment's jobs has
(``slimbench.sweeps``), so the table is exactly the preset's grid; jobs without a record are
listed as not run yet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from slimbench.errors import ConfigError
from slimbench.leaderboard.board import Board, build
from slimbench.leaderboard.pareto import plot
from slimbench.leaderboard.render import to_html, to_json, to_markdown, write_csv
from slimbench.records import RunRecord
from slimbench.store import ResultStore

PLOTS = {"bytes": "quality against the stored bytes of the block linears", "latency": "quality against decode latency"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimbench leaderboard", description="Tables and Pareto plots from the results store.")
    p.add_argument("--results-dir", default=os.environ.get("SLIMBENCH_RESULTS_DIR", "results/runs"))
    p.add_argument("--experiment", help="only the runs of this experiment preset (conf/experiment/<name>.yaml)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--suite", help="only this eval suite")
    p.add_argument("--methods", help="only these methods (comma-separated, e.g. dense,wanda,sparsegpt)")
    p.add_argument("--out", help="write <name>.md/.csv/.html/.json and the Pareto plots (PNG) to this directory")
    p.add_argument("--name", help="file name stem for --out (default: the experiment's name, else 'leaderboard')")
    p.add_argument("--no-plots", action="store_true", help="with --out: no Pareto plots")
    p.add_argument("--csv", help="CSV output path (default: <results-dir>/leaderboard.csv without --out)")
    p.add_argument("--markdown", help="also write the Markdown tables to this file")
    p.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (offline, under the results dir)")
    p.add_argument("overrides", nargs="*", help="the experiment's overrides, as given to `slimbench -m experiment=<name> ...`")
    return p


def select(args, records: list[RunRecord], preflight: Callable[[list[str]], list[str]]) -> tuple[list[RunRecord], list[str]]:
    """The records to show and the experiment's jobs that have none. ``preflight`` is the command
    line's override check and rewriting (``slimbench.cli.preflight``)."""
    missing: list[str] = []
    if args.experiment:
        overrides = preflight([f"experiment={args.experiment}", *args.overrides])  # checks the experiment's name too
        records, missing = experiment_records(args.experiment, overrides[1:], records)
    elif args.overrides:
        raise ConfigError(f"overrides {' '.join(args.overrides)!r} need --experiment (they select an experiment's jobs)")
    if args.model:
        records = [r for r in records if r.model.get("name") == args.model]
    if args.suite:
        records = [r for r in records if r.eval.get("suite") == args.suite]
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
        records = [r for r in records if r.method_name in wanted]
    return records, missing


def experiment_records(name: str, overrides: list[str], records: list[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """The records of the experiment's jobs (matched by run_id, for every thread count the store
    holds) and the jobs without one. ``overrides`` are pre-flighted."""
    from slimbench.sweeps import experiment_jobs

    jobs = experiment_jobs(name, overrides)
    threads = {r.environment.get("torch_threads") for r in records} - {None}
    by_id = {r.run_id: r for r in records}
    chosen, missing = {}, []
    for job in jobs:
        found = [by_id[i] for i in job.run_ids(threads) if i in by_id]
        chosen.update({r.run_id: r for r in found})
        if not found:
            missing.append(" ".join(job.overrides) + (f"  (invalid: {job.error})" if job.error else ""))
    return list(chosen.values()), missing


def write_all(board: Board, out: Path, name: str, plots: bool) -> list[Path]:
    """<name>.md/.csv/.html/.json (+ <name>-pareto-<axis>.png) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for axis, caption in PLOTS.items() if plots else ():
        path = plot(board, axis, out / f"{name}-pareto-{axis}.png", title=f"{name}: {caption}")
        if path is not None:
            images[f"Pareto: {caption}"] = path.name
    paths = [out / f"{name}.md", out / f"{name}.html", out / f"{name}.json"]
    paths[0].write_text(to_markdown(board, images) + "\n", encoding="utf-8")
    paths[1].write_text(to_html(board, images, title=f"slimbench leaderboard: {name}"), encoding="utf-8")
    paths[2].write_text(to_json(board) + "\n", encoding="utf-8")
    paths.append(write_csv(board, out / f"{name}.csv"))
    return paths + [out / p for p in images.values()]


def log_wandb(board: Board, name: str, images: list[Path], results_dir: str) -> None:
    from slimbench.leaderboard.render import to_frame
    from slimbench.tracking import WandbConfig, WandbTracker

    tracker = WandbTracker(WandbConfig(dir=results_dir))
    tracker.start(run_name=f"leaderboard/{name}", run_key=None, config={"leaderboard": name}, tags=["leaderboard"], group=None)
    try:
        tracker.log_leaderboard(name, to_frame(board), {p.stem: p for p in images if p.suffix == ".png"})
    finally:
        tracker.finish(ok=True)


def main(argv: list[str], preflight: Callable[[list[str]], list[str]] = list) -> int:
    args = parser().parse_args(argv)
    if not Path(args.results_dir).is_dir():
        print(f"slimbench: error: results dir {args.results_dir!r} does not exist", file=sys.stderr)
        return 2
    try:
        stored = ResultStore(args.results_dir).latest()
        records, missing = select(args, stored, preflight)
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr)
        return 2
    board = build(records, missing)
    name = args.name or args.experiment or "leaderboard"
    written = write_all(board, Path(args.out), name, plots=not args.no_plots) if args.out else []
    print(to_markdown(board))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(board) + "\n", encoding="utf-8")
    if args.csv or not args.out:
        written.append(write_csv(board, args.csv or Path(args.results_dir) / "leaderboard.csv"))
    if args.wandb:
        log_wandb(board, name, written, args.results_dir)
    configs = sum(len(g.configs) for g in board.groups)
    if args.experiment and missing and not records and stored:
        print(f"slimbench: note: none of the store's {len(stored)} runs is a job of experiment {args.experiment!r} as given: "
              "a run's identity includes every override and the data source, so pass the sweep's overrides and its "
              "environment (SLIMBENCH_DATA_DIR) to the leaderboard too", file=sys.stderr)
    print(f"\n{len(records)} runs in {configs} configs" + (f", {len(missing)} job(s) not run yet" if missing else "")
          + "".join(f"\nwrote {p}" for p in written))
    return 0
