"""slimbench's zero-shot evaluator vs lm-eval's own built-in task, in one process (not a test).

Loads a model through slimbench, then scores one task twice on the same documents:
  1. slimbench's ``zeroshot`` evaluator (local files -> slimbench's converter -> task config
     that includes lm-eval's YAML);
  2. lm-eval's built-in task from its default TaskManager, with only its dataset overridden
     (dataset_path json, data_files = a JSONL this script writes from the original files with
     its own few lines of conversion), wrapped in an ad-hoc group so that lm-eval merges the
     overrides into its own definition.
Both run ``simple_evaluate`` on the same ``HFLM`` wrapper kind. The script asserts that the
metrics (acc, acc_norm) and document counts are identical and prints both.

    .venv/bin/python benchmarks/zeroshot_crosscheck.py --task arc_easy --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.zeroshot import ZeroShot, ZeroShotConfig
from slimbench.models.loaders import LoadContext, resolve_model

REPO = Path(__file__).resolve().parents[1]


# -- an independent conversion of the original files (the hub rows lm-eval's task reads) -------
def _arc_like(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        choices = rec["question"]["choices"]
        out.append({
            "id": rec["id"],
            "question": rec["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": rec["answerKey"],
        })
    return out


def _piqa(data_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (data_dir / "piqa" / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = (data_dir / "piqa" / "valid-labels.lst").read_text().split()
    assert len(rows) == len(labels)
    return [{**r, "label": int(y)} for r, y in zip(rows, labels)]


def _boolq(data_dir: Path) -> list[dict]:  # SuperGLUE's rows: "title -- passage", label 1 = true
    rows = [json.loads(x) for x in (data_dir / "boolq" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{"question": r["question"], "passage": r["title"] + " -- " + r["passage"], "idx": i, "label": 1 if r["answer"] else 0}
            for i, r in enumerate(rows)]


INDEPENDENT = {  # task -> (split lm-eval evaluates, rows)
    "arc_easy": ("test", lambda d: _arc_like(d / "ai2_arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl")),
    "arc_challenge": ("test", lambda d: _arc_like(d / "ai2_arc" / "ARC-Challenge" / "ARC-Challenge-Test.jsonl")),
    "piqa": ("validation", _piqa),
    "boolq": ("validation", _boolq),
}


def builtin_task_results(model, tokenizer, task: str, data_dir: Path, limit: int | None, batch_size: int, tmp: Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    split, convert = INDEPENDENT[task]
    data_file = tmp / f"{task}.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in convert(data_dir)), encoding="utf-8")
    override = {
        "task": task,  # lm-eval's registered task: its YAML is loaded and these keys merged over it
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}},
        "training_split": None,
        "validation_split": "validation" if split == "validation" else None,
        "test_split": "test" if split == "test" else None,
    }
    manager = TaskManager()
    loaded = manager.load([{"group": "crosscheck", "task": [override]}])
    source = loaded["tasks"][task].config.metadata.get("config_source")
    print(f"lm-eval built-in task {task} from {source}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=[{"group": "crosscheck", "task": [override]}], task_manager=manager,
                          num_fewshot=0, limit=limit, bootstrap_iters=1000, log_samples=False)
    return {"results": out["results"][task], "n": out["n-samples"][task], "config_source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("SLIMBENCH_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arc_easy", choices=sorted(INDEPENDENT))
    parser.add_argument("--limit", type=int, default=None, help="first N documents (default: the full split)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "zeroshot_crosscheck.json"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}"])
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    ctx = LoadContext(cache_dir=Path(paths["cache_dir"]).expanduser())
    source, loader, loader_cfg = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), ctx)
    bundle = loader.load(source, loader_cfg, ctx)
    print(f"model {source.name}: {sum(p.numel() for p in bundle.model.parameters()):,} params, threads {torch.get_num_threads()}")

    start = time.perf_counter()
    evaluator = ZeroShot(ZeroShotConfig(tasks=(args.task,), limit=args.limit, batch_size=args.batch_size))
    eval_ctx = EvalContext(data_dir=data_dir, device="cpu", seed=0, threads=torch.get_num_threads(), cache_dir=ctx.cache_dir)
    evaluator.check(eval_ctx)
    ours = {m.name.split(".", 1)[1]: m.value for m in evaluator(bundle, eval_ctx).metrics if m.name.startswith(f"{args.task}.")}
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        theirs = builtin_task_results(bundle.model, bundle.tokenizer, args.task, data_dir, args.limit, args.batch_size, Path(tmp))
    theirs_s = time.perf_counter() - start
    builtin = {k.split(",")[0]: v for k, v in theirs["results"].items() if k.endswith(",none") and "_stderr" not in k}

    summary = {
        "model": source.name,
        "task": args.task,
        "limit": args.limit,
        "docs": theirs["n"],
        "slimbench": ours,
        "lm_eval_builtin": builtin,
        "builtin_config_source": theirs["config_source"],
        "slimbench_s": round(ours_s, 1),
        "lm_eval_builtin_s": round(theirs_s, 1),
        "identical": ours == builtin,
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    assert ours == builtin, f"slimbench {ours} != lm-eval built-in {builtin}"
    print(f"OK: identical {', '.join(f'{k}={v:.4f}' for k, v in sorted(ours.items()))} on {theirs['n']['effective']} documents")


if __name__ == "__main__":
    main()
