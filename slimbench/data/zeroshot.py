"""Zero-shot task data: the original files in the data dir, converted to the rows of the
Hugging Face datasets that lm-eval's built-in tasks read.

lm-eval's task definitions (prompts, choices, targets, metrics) are used unchanged; only the
dataset behind each task is swapped for a local JSONL file. Each converter reproduces the
fields (names, types, order of rows) of the hub dataset the built-in task loads:

==============  =========================  ===============  =====  ==============================
lm-eval task    hub dataset (built-in)     split evaluated  rows   local file(s)
==============  =========================  ===============  =====  ==============================
piqa            baber/piqa                 validation       1838   piqa/valid.jsonl + labels
arc_easy        allenai/ai2_arc ARC-Easy   test             2376   ARC-Easy-Test.jsonl
arc_challenge   allenai/ai2_arc ARC-Chall. test             1172   ARC-Challenge-Test.jsonl
boolq           aps/super_glue boolq       validation       3270   boolq/dev.jsonl (Google)
winogrande      allenai/winogrande xl      validation       1267   winogrande/dev.jsonl + labels
openbookqa      allenai/openbookqa main    test              500   openbookqa/test.jsonl
lambada_openai  EleutherAI/lambada_openai  test             5153   lambada_test.jsonl
==============  =========================  ===============  =====  ==============================

Format notes (what the hub datasets hold, and how the originals map onto it):

* ARC / OpenBookQA originals nest ``question: {stem, choices: [{text, label}]}``; the hub
  rows flatten this to ``question`` (ARC) or ``question_stem`` (OBQA) and
  ``choices: {text: [...], label: [...]}``. Labels are kept as strings (ARC has "1".."4" too).
* PIQA and WinoGrande keep labels in a separate ``.lst`` file; the hub rows carry them as
  ``label`` (int 0/1) and ``answer`` (string "1"/"2").
* BoolQ: lm-eval reads SuperGLUE's copy, whose passage is ``"<title> -- <passage>"`` and
  whose label is 0 (False) / 1 (True), with ``idx`` the row number; the Google release holds
  ``title``, ``passage`` and ``answer`` (bool) separately, in the same order.

A task whose built-in definition evaluates a different split than the local file holds is
refused (see :func:`eval_split_of`). Training splits are not available offline, so few-shot
evaluation needs the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from slimbench.data.corpora import sha256_file
from slimbench.errors import ConfigError, DataUnavailableError
from slimbench.registry import Registry

CONVERTER_VERSION = "1"  # bump when a converter's output changes


# -- readers -----------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _zip_labels(rows: list[dict], labels: list[str], what: str) -> list[tuple[dict, str]]:
    if len(rows) != len(labels):
        raise DataUnavailableError(f"{what}: {len(rows)} rows but {len(labels)} labels")
    return list(zip(rows, labels))


def _flat_choices(question: dict) -> dict:
    return {"text": [c["text"] for c in question["choices"]], "label": [c["label"] for c in question["choices"]]}


# -- converters: original files -> hub rows ------------------------------------------------------
def piqa_rows(files: dict[str, Path]) -> list[dict]:
    pairs = _zip_labels(_jsonl(files["data"]), _labels(files["labels"]), "piqa")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)} for r, lab in pairs]


def arc_rows(files: dict[str, Path]) -> list[dict]:
    return [
        {"id": r["id"], "question": r["question"]["stem"], "choices": _flat_choices(r["question"]), "answerKey": r["answerKey"]}
        for r in _jsonl(files["data"])
    ]


def openbookqa_rows(files: dict[str, Path]) -> list[dict]:
    return [
        {"id": r["id"], "question_stem": r["question"]["stem"], "choices": _flat_choices(r["question"]), "answerKey": r["answerKey"]}
        for r in _jsonl(files["data"])
    ]


def boolq_rows(files: dict[str, Path]) -> list[dict]:
    return [
        {"question": r["question"], "passage": f"{r['title']} -- {r['passage']}", "idx": i, "label": int(bool(r["answer"]))}
        for i, r in enumerate(_jsonl(files["data"]))
    ]


def winogrande_rows(files: dict[str, Path]) -> list[dict]:
    pairs = _zip_labels(_jsonl(files["data"]), _labels(files["labels"]), "winogrande")
    for r, lab in pairs:
        if r.get("answer") not in (None, "", lab):
            raise DataUnavailableError(f"winogrande {r.get('qID')}: answer {r['answer']!r} disagrees with label {lab!r}")
    return [{"sentence": r["sentence"], "option1": r["option1"], "option2": r["option2"], "answer": lab} for r, lab in pairs]


def lambada_rows(files: dict[str, Path]) -> list[dict]:
    return [{"text": r["text"]} for r in _jsonl(files["data"])]


# -- task specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroShotTaskSpec:
    name: str  # lm-eval task name
    lm_eval_yaml: str  # the built-in definition, relative to lm_eval/tasks/
    hub_dataset: str  # what the built-in task loads (for the record)
    split: str  # the split the local file holds ("validation" | "test")
    files: dict[str, str]  # role -> path relative to the data dir
    convert: Callable[[dict[str, Path]], list[dict]]
    rows: int  # expected row count
    fields: tuple[str, ...]  # the hub dataset's fields, in order


ZEROSHOT_TASKS: Registry[ZeroShotTaskSpec] = Registry("zero-shot task (local data)")


def _register(spec: ZeroShotTaskSpec) -> None:
    ZEROSHOT_TASKS.register(spec.name, spec)


_MC = ("id", "question", "choices", "answerKey")
_register(ZeroShotTaskSpec("piqa", "piqa/piqa.yaml", "baber/piqa", "validation",
                           {"data": "piqa/valid.jsonl", "labels": "piqa/valid-labels.lst"},
                           piqa_rows, 1838, ("goal", "sol1", "sol2", "label")))
_register(ZeroShotTaskSpec("arc_easy", "arc/arc_easy.yaml", "allenai/ai2_arc ARC-Easy", "test",
                           {"data": "ai2_arc/ARC-Easy/ARC-Easy-Test.jsonl"}, arc_rows, 2376, _MC))
_register(ZeroShotTaskSpec("arc_challenge", "arc/arc_challenge.yaml", "allenai/ai2_arc ARC-Challenge", "test",
                           {"data": "ai2_arc/ARC-Challenge/ARC-Challenge-Test.jsonl"}, arc_rows, 1172, _MC))
_register(ZeroShotTaskSpec("boolq", "super_glue/boolq/default.yaml", "aps/super_glue boolq", "validation",
                           {"data": "boolq/dev.jsonl"}, boolq_rows, 3270, ("question", "passage", "idx", "label")))
_register(ZeroShotTaskSpec("winogrande", "winogrande/default.yaml", "allenai/winogrande winogrande_xl", "validation",
                           {"data": "winogrande/dev.jsonl", "labels": "winogrande/dev-labels.lst"},
                           winogrande_rows, 1267, ("sentence", "option1", "option2", "answer")))
_register(ZeroShotTaskSpec("openbookqa", "openbookqa/openbookqa.yaml", "allenai/openbookqa main", "test",
                           {"data": "openbookqa/test.jsonl"}, openbookqa_rows, 500,
                           ("id", "question_stem", "choices", "answerKey")))
_register(ZeroShotTaskSpec("lambada_openai", "lambada/lambada_openai.yaml", "EleutherAI/lambada_openai default", "test",
                           {"data": "lambada_openai/lambada_test.jsonl"}, lambada_rows, 5153, ("text",)))

DEFAULT_TASKS = ("piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa", "lambada_openai")


# -- lm-eval's own definitions ----------------------------------------------------------------
def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


class _KeepTags(yaml.SafeLoader):
    """Reads lm-eval YAML without importing anything: ``!function x.y`` stays a string."""


_KeepTags.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path) -> dict:
    """A task YAML with its ``include`` chain merged (local keys win), as lm-eval merges it."""
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_KeepTags)  # noqa: S506 (SafeLoader subclass)
    includes = cfg.pop("include", None)
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else (includes or []):
        merged.update(read_task_yaml((path.parent / inc) if not Path(inc).is_absolute() else Path(inc)))
    merged.update(cfg)
    return merged


def eval_split_of(cfg: dict) -> str | None:
    """The split lm-eval evaluates: ``test_split`` if the task defines one, else ``validation_split``."""
    if cfg.get("test_split"):
        return "test"
    if cfg.get("validation_split"):
        return "validation"
    return None


# -- local task data -------------------------------------------------------------------------------
@dataclass
class LocalTaskData:
    spec: ZeroShotTaskSpec
    builtin_yaml: Path
    task_version: object
    files: dict[str, dict]  # role -> {"path": relative path, "sha256": ...}
    rows: list[dict] = field(repr=False)
    jsonl: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def converted_sha256(self) -> str:
        return hashlib.sha256(self.jsonl).hexdigest()

    def fingerprint(self) -> dict:
        return {
            "task": self.name,
            "source": "local",
            "split": self.spec.split,
            "files": self.files,
            "rows": len(self.rows),
            "converted_sha256": self.converted_sha256,
            "converter_version": CONVERTER_VERSION,
            "lm_eval_task_yaml": self.spec.lm_eval_yaml,
            "lm_eval_task_version": self.task_version,
            "replaces_hub_dataset": self.spec.hub_dataset,
        }


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def load_local_task(name: str, data_dir: Path) -> LocalTaskData:
    """Read and convert one task's files; every problem is a one-line error (pre-load check)."""
    try:
        spec = ZEROSHOT_TASKS.get(name)
    except KeyError as exc:
        raise ConfigError(
            f"{exc}; with a data dir only these tasks are available offline (set paths.data_dir=null "
            "to run any lm-eval task from the Hugging Face hub)"
        ) from None
    builtin = lm_eval_tasks_dir() / spec.lm_eval_yaml
    if not builtin.is_file():
        raise ConfigError(f"zero-shot task {name}: lm-eval's definition {spec.lm_eval_yaml} is not in this lm-eval install")
    base = read_task_yaml(builtin)
    if base.get("task") != name or eval_split_of(base) != spec.split:
        raise ConfigError(
            f"zero-shot task {name}: lm-eval's {spec.lm_eval_yaml} defines task {base.get('task')!r} evaluated on "
            f"split {eval_split_of(base)!r}, but the local file holds {spec.split!r}; refusing to mix splits"
        )
    paths = {role: data_dir / rel for role, rel in spec.files.items()}
    for role, path in paths.items():
        if not path.is_file():
            raise DataUnavailableError(f"zero-shot task {name}: expected file {str(path)!r} in the data dir")
    try:
        rows = spec.convert(paths)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataUnavailableError(f"zero-shot task {name}: cannot convert {spec.files}: {type(exc).__name__}: {exc}") from None
    if len(rows) != spec.rows:
        raise DataUnavailableError(f"zero-shot task {name}: {len(rows)} rows, expected {spec.rows} ({spec.split} split)")
    files = {role: {"path": spec.files[role], "sha256": sha256_file(p)} for role, p in paths.items()}
    version = (base.get("metadata") or {}).get("version")
    return LocalTaskData(spec, builtin, version, files, rows, to_jsonl(rows))


# -- lm-eval task configs over the converted files ---------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def task_config(task: LocalTaskData, data_file: Path, hf_cache: Path) -> dict:
    """lm-eval's built-in definition (``include``) with only the dataset swapped for ``data_file``.

    The training split is dropped (not available offline) and only the evaluated split is
    kept, so lm-eval never asks the local dataset for a split it does not have."""
    split = task.spec.split
    return {
        "include": str(task.builtin_yaml),
        "task": task.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}, "cache_dir": str(hf_cache)},
        "training_split": None,
        "validation_split": "validation" if split == "validation" else None,
        "test_split": "test" if split == "test" else None,
    }


def write_task_configs(tasks: list[LocalTaskData], cache_dir: Path) -> Path:
    """Converted JSONL (content-addressed) and one YAML per task in a directory for
    ``TaskManager(include_path=...)``; the directory is named by its contents."""
    root = cache_dir / "zeroshot"
    configs = {}
    for task in tasks:
        data_file = root / "data" / f"{task.name}-{task.converted_sha256[:16]}.jsonl"
        _write_atomic(data_file, task.jsonl)
        configs[task.name] = yaml.safe_dump(task_config(task, data_file, root / "hf-datasets"), sort_keys=False).encode()
    digest = hashlib.sha256(b"".join(configs[k] for k in sorted(configs))).hexdigest()[:16]
    task_dir = root / "tasks" / digest
    for name, text in configs.items():
        _write_atomic(task_dir / f"{name}.yaml", text)
    return task_dir
