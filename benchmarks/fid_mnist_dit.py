"""FID of the MNIST DiT under named sampler settings, through the normal run pipeline.

Each row is one ``slimbench`` run (``model=dit-mnist eval=fid`` plus the row's overrides; its
record goes to the results store, so a finished row is not run again). Afterwards every row
found in the store is summarised: FID (classifier features), per-image sampling latency, the
real-vs-real floor, and the classifier's held-out accuracy and training time.

    flock /work/bench.lock .venv/bin/python benchmarks/fid_mnist_dit.py --rows ddim50-s0,ddim50-s1
    .venv/bin/python benchmarks/fid_mnist_dit.py --summary-only
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.run import plan_run, run_experiment
from slimbench.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
F = "eval.evaluators.fid"
ROWS = {
    "ddim50-s0": ["seed=0"],
    "ddim50-s1": ["seed=1"],
    "ddim50-noclamp-s0": ["seed=0", f"{F}.sampler.clamp_sample=false"],
    "ddim50-noclamp-s1": ["seed=1", f"{F}.sampler.clamp_sample=false"],
    "ddpm1000-s0": ["seed=0", f"{F}.sampler.name=ddpm", f"{F}.sampler.steps=1000"],
    "ddpm1000-s1": ["seed=1", f"{F}.sampler.name=ddpm", f"{F}.sampler.steps=1000"],
}


def _config(overrides: list[str], args) -> dict:
    base = ["model=dit-mnist", "eval=fid", "tracker=none", f"paths.data_dir={args.data_dir}",
            f"paths.results_dir={args.results_dir}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=base + overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _summary(name: str, record: dict) -> dict:
    metrics = {m["name"]: m["value"] for m in record["metrics"] if m["evaluator"] == "fid"}
    protocol, details = record["protocol"]["fid"], record["artifacts"]["fid"]
    sampler = protocol["sampler"]
    return {
        "row": name,
        "run_id": record["run_id"],
        "sampler": sampler["name"],
        "steps": sampler["steps"],
        "eta": sampler["eta"],
        "spacing": sampler["spacing"],
        "clamp_sample": sampler["clamp_sample"],
        "seed": protocol["seed"],
        "num_samples": protocol["num_samples"],
        "fid_mnist_clf": metrics["fid_mnist_clf"],
        "sample_ms_per_image": metrics["sample_ms_per_image"],
        "sampling_s": details["sampling_s"],
        "fid_real_floor_train_vs_heldout": details.get("fid_real_floor_train_vs_heldout"),
        "classifier": details["extractor"],
        "threads": protocol["threads"],
    }


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| row | sampler | steps | η | clamp | seed | n | FID (mnist_clf) | ms / image | real floor |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['sampler']} | {r['steps']} | {r['eta']} | {r['clamp_sample']} | {r['seed']} | "
            f"{r['num_samples']} | {r['fid_mnist_clf']:.3f} | {r['sample_ms_per_image']:.2f} | "
            f"{r['fid_real_floor_train_vs_heldout']:.3f} |"
        )
    clf = rows[0]["classifier"]
    lines.append(
        f"\nClassifier (mnist_clf): held-out accuracy {clf['heldout_accuracy']:.4f} on {clf['heldout_images']} images, "
        f"training accuracy {clf['train_accuracy']:.4f}, trained in {clf['train_time_s']} s ({clf['loaded_from']})."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--data-dir", default=os.environ.get("SLIMBENCH_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--results-dir", default=str(REPO / "results" / "runs"))
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "fid_mnist_dit"))
    args = parser.parse_args()

    if not args.summary_only:
        for name in [r for r in args.rows.split(",") if r]:
            outcome = run_experiment(_config(ROWS[name], args))
            print(name, outcome.status, outcome.run_id, flush=True)

    store, rows = ResultStore(args.results_dir), []
    for name, overrides in ROWS.items():
        record = store.completed(plan_run(_config(overrides, args)).run_id)
        if record is not None:
            rows.append(_summary(name, record))
    if rows:
        Path(args.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(args.out + ".md").write_text(_markdown(rows))
        print(_markdown(rows))


if __name__ == "__main__":
    main()
