"""save_dir on SmolLM2-135M: compressed models saved, reloaded in fresh processes, measured again.

Rows (calibration 32 x 2048, quick suite: perplexity on the first 8 WikiText-2 test windows):

* GPTQ w4 g128 and SparseGPT 2:4: standard formats (compressed-tensors / transformers). A fresh
  process that never imports slimbench loads each with ``AutoModelForCausalLM.from_pretrained``
  (``benchmarks/hf_perplexity.py``) and measures the same perplexity: it must be within 0.5% of
  the record's.
* FLAP 20% and SVD-LLM 20%: shapes no standard config expresses (slimbench's format). A fresh
  process loads each with ``slimbench.load_pretrained`` and measures the perplexity with
  slimbench's evaluator: it must equal the record's exactly (the same outputs, bitwise).

Every row also reports the saved directory's format and size, and the saving run's own check
(reloaded in-process: identical outputs on a probe input).

    flock /work/bench.lock python benchmarks/saved_models_check.py --data-dir ../shared/data

Work files (records, saved models) go under ``--work`` (default: a temporary directory); the
summary goes to ``results/benchmarks/saved_models_smollm2.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "gptq-w4g128": (["method=gptq", "method.bits=4", "method.group_size=128"], "transformers"),
    "sparsegpt-2:4": (["method=sparsegpt", "method.pattern=2:4", "method.sparsity=0.5"], "transformers"),
    "flap-20": (["method=flap", "method.ratio=0.2"], "slimbench"),
    "svd_llm-20": (["method=svd_llm", "method.ratio=0.2"], "slimbench"),
}
SLIMBENCH_PPL = """
import json, sys
from pathlib import Path
import slimbench
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
bundle = slimbench.load_bundle(sys.argv[1])
ev = Perplexity(PerplexityConfig(max_windows=8))
ctx = EvalContext(data_dir=Path(sys.argv[2]), device="cpu", seed=0, threads=0)
ev.check(ctx)
result = ev(bundle, ctx)
print(json.dumps({"perplexity": next(m.value for m in result.metrics if m.name == "perplexity"),
                  "text_sha256": result.protocol["text_sha256"]}))
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work", default=None)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "saved_models_smollm2"))
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="slimbench-saved-models-"))
    data_dir = str(Path(args.data_dir).resolve())
    summary = {}
    for name in args.rows.split(","):
        overrides, loader = ROWS[name]
        common = ["model=smollm2-135m", "eval=quick", "calib.nsamples=32", "calib.seqlen=2048", "tracker=none",
                  f"paths.data_dir={data_dir}", f"paths.results_dir={work / 'results'}", f"save_dir={work / 'models'}"]
        start = time.perf_counter()
        proc = run([sys.executable, "-m", "slimbench.cli", *overrides, *common])
        record_path = next(line.split("record: ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("record: "))
        record = json.loads(Path(record_path).read_text())
        saved = record["artifacts"]["saved_model"]
        ppl = next(m["value"] for m in record["metrics"] if m["evaluator"] == "perplexity" and m["name"] == "perplexity")
        row = {"overrides": overrides, "run_id": record["run_id"], "status": record["status"], "run_s": round(time.perf_counter() - start, 1),
               "record_perplexity": ppl, "record_text_sha256": record["protocols"]["perplexity"]["text_sha256"],
               "format": saved["format"], "dir_bytes": du(Path(saved["path"])), "weights_bytes": saved["weights_bytes"],
               "bytes_after": record["compression"]["bytes_after"], "verified_at_save": saved["verified"], "path": saved["path"]}
        if loader == "transformers":  # a fresh process that never imports slimbench
            hf = last_json(run([sys.executable, str(REPO / "benchmarks" / "hf_perplexity.py"), saved["path"], data_dir, "--windows", "8"],
                               cwd=work).stdout)
            row.update(reload="AutoModelForCausalLM.from_pretrained", reload_perplexity=hf["perplexity"],
                       reload_text_sha256=hf["text_sha256"], slimbench_imported=hf["slimbench_imported"],
                       relative_difference=hf["perplexity"] / ppl - 1)
        else:
            sb = last_json(run([sys.executable, "-c", SLIMBENCH_PPL, saved["path"], data_dir]).stdout)
            row.update(reload="slimbench.load_pretrained", reload_perplexity=sb["perplexity"], reload_text_sha256=sb["text_sha256"],
                       identical=sb["perplexity"] == ppl, relative_difference=sb["perplexity"] / ppl - 1)
        summary[name] = row
        print(json.dumps({name: row}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| model | format | dir MiB | record ppl (8 windows) | reloaded by | reloaded ppl | rel. diff |", "|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        lines.append(f"| {name} | {r['format']} | {r['dir_bytes'] / 2**20:.1f} | {r['record_perplexity']:.4f} | {r['reload']} | "
                     f"{r['reload_perplexity']:.4f} | {r['relative_difference']:+.3%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
