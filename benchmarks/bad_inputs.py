"""Every row of the bad-input table (tests/bad_inputs.py), classified by what slimbench did.

Runs each case through ``slimbench.cli.main`` in one process, letting weights load (so a case
that validation misses is seen through to the end), and counts the outcomes:

    before-load        exit 2, one ``slimbench: error:`` line, no weights loaded, no record
    other-before-load  failed before loading, but not as one clear line (e.g. Hydra's multi-line error)
    after-load         weights loaded, then a failed record or a clear error
    traceback          a traceback was printed or an exception left the CLI
    accepted           an ok record was written (the bad input was silently accepted)

    flock /work/bench.lock .venv/bin/python benchmarks/bad_inputs.py --label after --out results/benchmarks/bad_inputs.json

Run it from the root of the checkout to measure (it imports that checkout's slimbench).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())

from tests.bad_inputs import CASES, make_fixtures, run_case  # noqa: E402

ORDER = ("before-load", "other-before-load", "after-load", "traceback", "accepted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run", help="name of this measurement (e.g. before, after)")
    parser.add_argument("--out", help="append the results to this JSON file (keyed by label)")
    parser.add_argument("--only", help="comma-separated case ids")
    parser.add_argument("--md", help="write every measurement of --out (counts, then each case's outcomes) to this Markdown file")
    args = parser.parse_args()
    os.environ.pop("SLIMBENCH_DATA_DIR", None)
    cases = [c for c in CASES if not args.only or c.id in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimbench-bad-inputs-") as tmp:
        fixtures = make_fixtures(Path(tmp) / "fixtures")
        for case in cases:
            outcome = run_case(case, fixtures, Path(tmp) / case.id, stop_at_load=False)
            kind = outcome.classify()
            line = outcome.error_lines[0] if outcome.error_lines else (outcome.escaped or _last_line(outcome))
            named = kind == "before-load" and case.expect in line and (case.suggest is None or case.suggest in line)
            rows.append({"id": case.id, "group": case.group, "args": list(case.args), "outcome": kind, "code": outcome.code,
                         "seconds": round(outcome.seconds, 2), "names_problem": named, "message": line[:300]})
            print(f"{kind:18s} {outcome.seconds:6.2f}s  {case.id:30s} {line[:150]}", flush=True)
    counts = collections.Counter(r["outcome"] for r in rows)
    slowest = max(rows, key=lambda r: r["seconds"])
    summary = {"cases": len(rows), "counts": {k: counts.get(k, 0) for k in ORDER},
               "before_load_naming_the_problem": sum(r["names_problem"] for r in rows),
               "slowest": {"id": slowest["id"], "seconds": slowest["seconds"], "outcome": slowest["outcome"]}}
    print(json.dumps(summary, indent=2))
    if args.out:
        path = Path(args.out)
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[args.label] = {"summary": summary, "rows": rows}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        if args.md:
            Path(args.md).write_text(markdown(data))
    return 0


def markdown(data: dict) -> str:
    """Counts by outcome per measurement, then one row per case with its outcome in each."""
    labels = sorted(data, key=lambda label: not label.startswith("before"))  # before-the-fixes first; messages of the last
    lines = ["# Bad-input table: outcomes by measurement", "",
             "`benchmarks/bad_inputs.py` runs every row of `tests/bad_inputs.py` (tiny models, the issue's small settings) "
             "through `slimbench.cli.main`, weights allowed to load. Outcomes: before-load = exit 2 with one "
             "`slimbench: error:` line, no weights loaded, no record; other-before-load = failed before loading but not as "
             "one line (Hydra's multi-line errors, a bare exit 1); after-load = weights loaded, then a failed record or "
             "an error; traceback = a traceback printed or an exception out of the CLI; accepted = an ok record (the bad "
             "input silently accepted). A measurement labelled with a commit ran that commit's code (the table and "
             "benchmark copied into an export of it); rows for features it did not have yet (pipelines) measure how it "
             "handled the unknown key. Seconds per case are wall times on a shared 2-core machine.", "",
             "| measurement | cases | " + " | ".join(ORDER) + " | before-load naming the problem | slowest case |",
             "|---" * (len(ORDER) + 4) + "|"]
    for label in labels:
        s = data[label]["summary"]
        slowest = f"{s['slowest']['id']} ({s['slowest']['seconds']:.2f} s, {s['slowest']['outcome']})"
        lines.append(f"| {label} | {s['cases']} | " + " | ".join(str(s["counts"][k]) for k in ORDER)
                     + f" | {s['before_load_naming_the_problem']} | {slowest} |")
    rows = {label: {r["id"]: r for r in data[label]["rows"]} for label in labels}
    ids = list(dict.fromkeys(i for label in labels for i in rows[label]))
    lines += ["", "| case | group | " + " | ".join(labels) + f" | message ({labels[-1]}) |", "|---" * (len(labels) + 3) + "|"]
    for i in ids:
        some = next(rows[label][i] for label in labels if i in rows[label])
        last = rows[labels[-1]].get(i, {})
        message = last.get("message", "").replace("|", "\\|")[:160]
        lines.append(f"| {i} | {some['group']} | " + " | ".join(rows[label].get(i, {}).get("outcome", "-") for label in labels)
                     + f" | {message} |")
    return "\n".join(lines) + "\n"


def _last_line(outcome) -> str:
    lines = [line for line in (outcome.stderr + outcome.stdout).splitlines() if line.strip() and "%|" not in line]
    return lines[-1] if lines else f"(exit {outcome.code}, no output)"


if __name__ == "__main__":
    sys.exit(main())
