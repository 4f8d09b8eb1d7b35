"""save_dir on SmolLM2-135M: compressed models saved, reloaded in fresh processes, measured again.

Rows (quick suite without latency: perplexity on the first ``--windows`` (8) WikiText-2 test windows of 2048 tokens):

* GPTQ w4 g128 and SparseGPT 2:4: standard formats (compressed-tensors / transformers). A fresh
  process that never imports slimbench loads each with ``AutoModelForCausalLM.from_pretrained``
  (``benchmarks/hf_perplexity.py``) and measures the same perplexity: it must be within 0.5% of
  the record's.
* FLAP 20% and SVD-LLM 20%: shapes no standard config expresses (slimbench's format). A fresh
  process loads each with ``slimbench.load_pretrained``: its logits must equal the in-memory
  compressed model's; and with ``slimbench.load_bundle`` (the same model with its tokenizer)
  slimbench's evaluator measures the perplexity, which must equal the record's exactly.

Each run goes through ``slimbench.experiment`` (the Python API; the command line composes the
same config) in its own process, which also stores the compressed model's logits on the first
``--ref-tokens`` test tokens; the reloading process compares its logits on the same tokens
(bitwise for slimbench's format; the largest absolute difference for plain transformers, whose
dequantized float32 weights differ from slimbench's CPU kernels within the format's tolerance).
Every row also reports the saved directory's format and size, and the saving run's own check
(reloaded in-process: identical outputs on a probe input).

    flock /work/bench.lock python benchmarks/saved_models_check.py --data-dir ../shared/data [--rows flap-20,svd_llm-20]
        [--nsamples 32] [--windows 8] [--no-reload-ppl]

``--rows`` measures some rows and keeps the others already in the summary file; calibration uses
``--nsamples`` windows of 2048 tokens (the checks compare a reload with its own record, so a
smaller calibration set changes the model, not the check); ``--no-reload-ppl`` skips the
fresh-process perplexity of the slimbench-format rows (their logits are still compared).

Work files (records, saved models) go under ``--work`` (default: a temporary directory); the
summary goes to ``results/benchmarks/interop.{json,md}``.
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
RUN_AND_REFERENCE = """
import json, sys
from pathlib import Path
import torch
from transformers import AutoTokenizer
import slimbench
sys.path.insert(0, sys.argv[4])
from hf_perplexity import wikitext_test_text
overrides, ref_path, ref_tokens = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
result = slimbench.experiment(*overrides)
assert result.status == "ok", (result.status, result.reason)
saved = result.record.artifacts["saved_model"]
tokenizer = AutoTokenizer.from_pretrained(saved["path"])
data_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("paths.data_dir="))
ids = tokenizer(wikitext_test_text(Path(data_dir)), return_tensors="pt", verbose=False).input_ids[:, :ref_tokens]  # [1, T]
result.bundle.hooks.reset_state()
with torch.no_grad():
    logits = result.model(input_ids=ids, use_cache=False).logits.float()  # [1, T, V]
torch.save({"input_ids": ids, "logits": logits}, ref_path)
print(json.dumps({"record": str(result.path)}))
"""
SLIMBENCH_RELOAD = """
import json, sys
from pathlib import Path
import torch
import slimbench
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
ref = torch.load(sys.argv[3])
model = slimbench.load_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(input_ids=ref["input_ids"], use_cache=False).logits.float()  # [1, T, V]
out = {"logits_identical": bool(torch.equal(logits, ref["logits"])), "ref_max_abs_logit_diff": float((logits - ref["logits"]).abs().max())}
if int(sys.argv[4]) == 0:  # logits only
    print(json.dumps(out))
    raise SystemExit(0)
bundle = slimbench.load_bundle(sys.argv[1])  # the model with its tokenizer, for the evaluator
ev = Perplexity(PerplexityConfig(max_windows=int(sys.argv[4])))
ctx = EvalContext(data_dir=Path(sys.argv[2]), device="cpu", seed=0, threads=0)
ev.check(ctx)
result = ev(bundle, ctx)
print(json.dumps({**out, "perplexity": next(m.value for m in result.metrics if m.name == "perplexity"),
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


def measure(name: str, overrides: list[str], loader: str, args, work: Path, data_dir: str) -> dict:
    """One row: run + save + reference logits, then the reload in a fresh process."""
    common = [f"model={args.model}", "eval=quick", "~eval.evaluators.latency", f"eval.evaluators.perplexity.max_windows={args.windows}", f"calib.nsamples={args.nsamples}", f"calib.seqlen={args.seqlen}",
              "tracker=none", f"paths.data_dir={data_dir}", f"paths.results_dir={work / 'results'}", f"save_dir={work / 'models'}"]
    ref = work / f"{name.replace(':', '-')}.ref.pt"
    start = time.perf_counter()
    out = last_json(run([sys.executable, "-c", RUN_AND_REFERENCE, json.dumps(overrides + common), str(ref), str(args.ref_tokens),
                         str(REPO / "benchmarks")]).stdout)
    record = json.loads(Path(out["record"]).read_text())
    saved = record["artifacts"]["saved_model"]
    ppl = next(m["value"] for m in record["metrics"] if m["evaluator"] == "perplexity" and m["name"] == "perplexity")
    row = {"model": args.model, "overrides": overrides, "calib_nsamples": args.nsamples, "windows": args.windows, "run_id": record["run_id"], "status": record["status"],
           "run_s": round(time.perf_counter() - start, 1), "record_perplexity": ppl,
           "record_text_sha256": record["protocols"]["perplexity"]["text_sha256"], "format": saved["format"],
           "dir_bytes": du(Path(saved["path"])), "weights_bytes": saved["weights_bytes"], "bytes_after": record["compression"]["bytes_after"],
           "verified_at_save": saved["verified"], "ref_tokens": args.ref_tokens, "path": saved["path"]}
    if loader == "transformers":  # a fresh process that never imports slimbench
        got = last_json(run([sys.executable, str(REPO / "benchmarks" / "hf_perplexity.py"), saved["path"], data_dir, "--windows", str(args.windows),
                             "--ref", str(ref)], cwd=work).stdout)
        row.update(reload="AutoModelForCausalLM.from_pretrained", slimbench_imported=got["slimbench_imported"])
    else:
        got = last_json(run([sys.executable, "-c", SLIMBENCH_RELOAD, saved["path"], data_dir, str(ref),
                             str(args.windows if args.reload_ppl else 0)]).stdout)
        row.update(reload="slimbench.load_pretrained", logits_identical=got["logits_identical"])
    row["ref_max_abs_logit_diff"] = got["ref_max_abs_logit_diff"]
    if "perplexity" in got:
        row.update(reload_perplexity=got["perplexity"], reload_text_sha256=got["text_sha256"], relative_difference=got["perplexity"] / ppl - 1)
    return row


def markdown(summary: dict) -> str:
    lines = ["# save_dir checkpoints reloaded in fresh processes (benchmarks/saved_models_check.py)", "",
             "Each row: the run (slimbench.experiment, save_dir) and its record's perplexity on the first `ppl windows` WikiText-2 "
             "test windows of 2048 tokens; the saved directory reloaded in a fresh process (plain transformers rows: "
             "`AutoModelForCausalLM.from_pretrained`, slimbench never imported) and measured again; the reloaded model's logits "
             "on the first test tokens against the in-memory compressed model's. `dir MiB`: the whole directory (weights, config, "
             "tokenizer, card, manifest).", "",
             "| row | model | format | dir MiB | calib windows | ppl windows | record ppl | reloaded by (fresh process) | reloaded ppl | rel. diff | "
             "max abs logit diff vs in-memory model |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        same = " (identical)" if r.get("logits_identical") else ""
        reloaded = (f"{r['reload_perplexity']:.4f} | {r['relative_difference']:+.3%}" if "reload_perplexity" in r else "not measured | -")
        lines.append(f"| {name} | {r.get('model', '?')} | {r['format']} | {r['dir_bytes'] / 2**20:.1f} | {r['calib_nsamples']} | {r['windows']} | "
                     f"{r['record_perplexity']:.4f} | {r['reload']} | {reloaded} | {r['ref_max_abs_logit_diff']:.3g}{same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work", default=None)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--model", default="smollm2-135m", help="model preset (tiny-llama: a smoke test of this script)")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows of 2048 tokens")
    parser.add_argument("--windows", type=int, default=8, help="perplexity windows (the record's and the reload's)")
    parser.add_argument("--reload-ppl", action=argparse.BooleanOptionalAction, default=True,
                        help="slimbench-format rows: also measure the reload's perplexity (else logits only)")
    parser.add_argument("--seqlen", type=int, default=2048, help="calibration window length")
    parser.add_argument("--ref-tokens", type=int, default=256, help="test tokens whose logits are compared after the reload")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "interop"))
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="slimbench-saved-models-"))
    data_dir = str(Path(args.data_dir).resolve())
    out = Path(args.out)
    summary = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}  # rows measured before stay
    for name in args.rows.split(","):
        overrides, loader = ROWS[name]
        summary[name] = measure(name, overrides, loader, args, work, data_dir)
        print(json.dumps({name: summary[name]}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
