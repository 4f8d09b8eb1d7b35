"""The bad-input table: command lines a careful user (or a typo) gives slimbench, and what each
must produce: exit code 2 and ONE line ``slimbench: error: ...`` naming the problem (with a
suggestion where one exists), before any weights load, writing no record.

``run_case`` runs one case through ``slimbench.cli.main`` in this process (no subprocess start
per case) and reports what happened; ``benchmarks/bad_inputs.py`` classifies every case of the
table (before / after load, traceback, silently accepted) and ``tests/test_bad_inputs.py``
asserts the contract for each row.

Every case runs on tiny-llama with the small settings of ``BASE`` (the issue's shorthand ``B``);
a case's own arguments replace the base arguments with the same key. Placeholders in braces are
files made by ``make_fixtures`` (a regular file, data dirs with broken files, local checkpoints).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA_DIR = REPO / "tests" / "fixtures" / "data"

BASE = (
    "model=tiny-llama", "method=dense", "eval=quick", "tracker=none",
    "eval.evaluators.perplexity.max_windows=2", "eval.evaluators.perplexity.seqlen=256",
    "eval.evaluators.latency.repeats=1", "eval.evaluators.latency.new_tokens=2", "eval.evaluators.latency.prompt_len=8",
    "calib.nsamples=4", "calib.seqlen=256",
    "paths.data_dir={data}", "paths.results_dir={tmp}/results", "paths.cache_dir={tmp}/cache",
)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: str  # a fragment the one error line must contain (it names the problem)
    suggest: str | None = None  # the suggestion the line must contain, where one exists
    group: str = ""


def _c(group: str, id: str, args: str, expect: str, suggest: str | None = None) -> Case:
    return Case(id=id, args=tuple(args.split()), expect=expect, suggest=suggest, group=group)


CASES: list[Case] = [
    # -- method ---------------------------------------------------------------------------------
    _c("method", "unknown-method", "method=nope", "unknown method 'nope'"),
    _c("method", "method-typo", "method=magnitud", "unknown method 'magnitud'", "did you mean 'magnitude'"),
    _c("method", "param-typo", "method=magnitude method.sparsty=0.5", "unknown parameter 'sparsty'", "did you mean 'sparsity'"),
    _c("method", "sparsity-range", "method=magnitude method.sparsity=1.5", "sparsity must be in [0, 1)"),
    _c("method", "sparsity-string", "method=magnitude method.sparsity=abc", "sparsity must be a number, got 'abc'"),
    _c("method", "sparsity-nan", "method=magnitude method.sparsity=nan", "sparsity must be a finite number"),
    _c("method", "sparsity-bool", "method=magnitude method.sparsity=true", "sparsity must be a number, got True"),
    _c("method", "sparsity-interpolation", "method=magnitude method.sparsity=${oops}", "method.sparsity"),
    _c("method", "pattern-bad", "method=magnitude method.pattern=3:2", "pattern"),
    _c("method", "rtn-sym-no", "method=rtn method.sym=no", "sym must be true or false, got 'no'"),
    _c("method", "gptq-sym-maybe", "method=gptq method.sym=maybe", "sym must be true or false, got 'maybe'"),
    _c("method", "gptq-act-order-int", "method=gptq method.act_order=1", "act_order must be true or false, got 1"),
    _c("method", "rtn-bits-5", "method=rtn method.bits=5", "bits"),
    _c("method", "rtn-bits-float", "method=rtn method.bits=4.5", "bits must be an integer, got 4.5"),
    _c("method", "rtn-bits-string", "method=rtn method.bits=four", "bits must be an integer, got 'four'"),
    _c("method", "gptq-percdamp-string", "method=gptq method.percdamp=abc", "percdamp must be a number, got 'abc'"),
    _c("method", "sparsegpt-blocksize-0", "method=sparsegpt method.blocksize=0", "blocksize"),
    _c("method", "wanda-variant-string", "method=wanda method.use_variant=yes", "use_variant must be true or false, got 'yes'"),
    _c("method", "awq-n-grid-list", "method=awq method.n_grid=[1,2]", "n_grid must be an integer, got [1, 2]"),
    _c("method", "smoothquant-alpha", "method=smoothquant method.alpha=2", "alpha"),
    _c("method", "svd-ratio-1", "method=svd method.ratio=1.0", "ratio"),
    _c("method", "asvd-allocation", "method=asvd method.allocation=foo", "allocation"),
    _c("method", "flap-ratio-negative", "method=flap method.ratio=-0.1", "ratio"),
    _c("method", "fora-interval-0", "model=tiny-dit method=fora method.interval=0", "interval must be >= 1"),
    _c("method", "lazydit-target-1", "model=tiny-dit method=lazydit method.target=1.0", "target must be null or in [0, 1)"),
    _c("method", "lazydit-target-negative", "model=tiny-dit method=lazydit method.target=-0.2", "target must be null or in [0, 1)"),
    _c("method", "lazydit-steps-1", "model=tiny-dit method=lazydit method.steps=1", "steps must be"),
    _c("method", "lazydit-on-lm", "method=lazydit", "lazydit"),
    _c("method", "fora-on-lm", "method=fora", "fora"),
    _c("method", "np-newton-string", "method=numerical_pruning method.newton_steps=abc", "newton_steps must be an integer, got 'abc'"),
    _c("method", "mixed-budget", "method=mixed_precision method.budget=xyz", "budget"),
    _c("method", "block-drop-all-layers", "method=block_drop method.drop_n=2", "drop_n=2 must be smaller than the number of blocks (2)"),
    _c("method", "shortgpt-drop-too-many", "method=shortgpt method.drop_n=5", "drop_n=5 must be smaller than the number of blocks (2)"),
    _c("method", "attn-drop-too-many", "method=attn_drop method.drop_n=3", "drop_n=3 must be smaller than the number of attn sublayers (2)"),
    _c("method", "pipeline-order", "pipeline=[gptq,sparsegpt]", "cannot follow gptq"),
    _c("method", "pipeline-one-stage", "pipeline=[wanda]", "at least two stages"),
    _c("method", "pipeline-unknown-stage", "pipeline=[wanda,gptqq]", "unknown method 'gptqq'", "did you mean 'gptq'"),
    _c("method", "pipeline-stage-param", "pipeline=[wanda,gptq] method.1.sym=no", "sym must be true or false, got 'no'"),
    _c("method", "pipeline-preset-unknown", "pipeline=wanda24-gptq", "unknown pipeline 'wanda24-gptq'", "did you mean 'wanda24-gptq4'"),
    # -- MoE routing ------------------------------------------------------------------------------
    _c("method", "flap-on-moe", "model=tiny-moe method=flap", "structured pruning of mixture-of-experts MLPs is not supported"),
    _c("method", "topp-p-zero", "model=tiny-moe method=moe_topp method.p=0", "p must be in (0, 1], got 0"),
    _c("method", "topp-p-above-one", "model=tiny-moe method=moe_topp method.p=1.5", "p must be in (0, 1], got 1.5"),
    _c("method", "topk-k-zero", "model=tiny-moe method=moe_topk method.k=0", "k must be >= 1, got 0"),
    _c("method", "topk-k-above-experts", "model=tiny-moe method=moe_topk method.k=5", "k=5 exceeds the model's 4 experts per layer"),
    _c("method", "topk-k-above-moefied-experts", "model=tiny-llama-moe method=moe_topk method.router=oracle method.k=9",
       "k=9 exceeds the model's 8 experts per layer"),
    _c("method", "routing-dense-model", "method=moe_topp", "the llama model has no MoE layers", "model=smollm2-135m-moe"),
    _c("method", "routing-moefied-own-router", "model=tiny-llama-moe method=moe_topp", "a MoEfied model has no router of its own",
       "set method.router to mlp, similarity or oracle"),
    _c("method", "routing-trained-moe-router", "model=tiny-moe method=moe_topk method.router=mlp", "router=mlp is for MoEfied models"),
    _c("method", "router-unknown", "model=tiny-moe method=moe_topk method.router=learned", "router must be one of 'own', 'oracle', 'similarity', 'mlp', got 'learned'"),
    _c("model", "moefied-experts-zero", "model=tiny-llama-moe model.num_experts=0", "num_experts must be >= 1, got 0"),
    _c("model", "moefied-dense-base-without-gated-mlp", "model=tiny-llama-moe model.base.family=gpt2 model.base.config={}",
       "MoEfication needs a gated MLP"),
    # -- model ----------------------------------------------------------------------------------
    _c("model", "unknown-model", "model=nomodel", "unknown model 'nomodel'"),
    _c("model", "hf-no-id", "model=hf", "model.id"),
    _c("model", "hf-unknown-id", "model=hf model.id=nobody/no-such-model", "unknown model 'nobody/no-such-model'"),
    _c("model", "hf-missing-dir", "model=hf model.id=/nonexistent/checkpoint", "does not exist"),
    _c("model", "hf-dir-no-config", "model=hf model.id={hf_noconfig}", "has no config.json"),
    _c("model", "hf-dir-bad-json", "model=hf model.id={hf_badjson}", "config.json"),
    _c("model", "hf-dir-unknown-arch", "model=hf model.id={hf_bert}", "no adapter covers"),
    _c("model", "hidden-size-negative", "model.config.hidden_size=-1", "hidden size (-1)"),
    _c("model", "layers-string", "model.config.num_hidden_layers=abc", "num_hidden_layers"),
    _c("model", "dtype-unknown", "model.dtype=float64", "unknown dtype 'float64'"),
    _c("model", "kind-unknown", "model.kind=vision", "unknown kind 'vision'"),
    _c("model", "loader-unknown", "model.loader=nope", "unknown model loader 'nope'"),
    _c("model", "init-seed-string", "model.init_seed=abc", "init_seed must be an integer, got 'abc'"),
    _c("model", "name-empty", "model.name=", "model.name"),
    _c("model", "name-list", "model.name=[a,b]", "model.name must be a non-empty string"),
    _c("model", "family-no-adapter", "model.family=bert", "no adapter covers"),
    _c("model", "tokenizer-unknown", "model.tokenizer=sentencepiece", "unknown offline tokenizer"),
    _c("model", "model-param-typo", "model.init_sed=1", "unknown parameter 'init_sed'", "did you mean 'init_seed'"),
    _c("model", "dit-checkpoint-missing", "model=tiny-dit model.checkpoint=/nonexistent/dit.pt", "does not exist"),
    _c("model", "dit-config-string", "model=tiny-dit model.config.num_blocks=abc", "num_blocks"),
    # -- eval -----------------------------------------------------------------------------------
    _c("eval", "eval-unknown", "eval=nope", "unknown eval 'nope'"),
    _c("eval", "ppl-seqlen-above-context", "eval.evaluators.perplexity.seqlen=4096", "exceeds the model's context (max_position_embeddings 2048)"),
    _c("eval", "ppl-seqlen-1", "eval.evaluators.perplexity.seqlen=1", "seqlen must be >= 2"),
    _c("eval", "ppl-max-windows-0", "eval.evaluators.perplexity.max_windows=0", "max_windows must be null or >= 1, got 0"),
    _c("eval", "ppl-max-windows-string", "eval.evaluators.perplexity.max_windows=abc", "max_windows must be an integer, got 'abc'"),
    _c("eval", "ppl-batch-float", "eval.evaluators.perplexity.batch_size=1.5", "batch_size must be an integer, got 1.5"),
    _c("eval", "ppl-dataset-unknown", "eval.evaluators.perplexity.dataset=c4", "unknown corpus 'c4'"),
    _c("eval", "ppl-split-not-local", "eval.evaluators.perplexity.split=train", "no local file"),
    _c("eval", "ppl-param-typo", "eval.evaluators.perplexity.seqln=128", "unknown parameter 'seqln'", "did you mean 'seqlen'"),
    _c("eval", "latency-repeats-0", "eval.evaluators.latency.repeats=0", "repeats must be >= 1"),
    _c("eval", "latency-warmup-negative", "eval.evaluators.latency.warmup=-1", "warmup must be >= 0"),
    _c("eval", "latency-prompt-above-context", "eval.evaluators.latency.prompt_len=4096", "exceeds the model's context (max_position_embeddings 2048)"),
    _c("eval", "evaluator-unknown", "+eval.evaluators.bleu={}", "unknown evaluator 'bleu'"),
    _c("eval", "zeroshot-limit-0", "eval=zeroshot-quick eval.evaluators.zeroshot.limit=0", "limit must be null or >= 1, got 0"),
    # -- calib ----------------------------------------------------------------------------------
    _c("calib", "calib-unknown", "calib=nope", "unknown calib 'nope'"),
    _c("calib", "nsamples-string", "method=wanda calib.nsamples=abc", "calib.nsamples must be an integer, got 'abc'"),
    _c("calib", "nsamples-string-unused", "method=dense calib.nsamples=abc", "calib.nsamples must be an integer, got 'abc'"),
    _c("calib", "nsamples-zero", "method=wanda calib.nsamples=0", "nsamples must be >= 1"),
    _c("calib", "seqlen-above-context", "method=wanda calib.seqlen=4096", "exceeds the model's context (max_position_embeddings 2048)"),
    _c("calib", "calib-seed-string", "method=wanda calib.seed=abc", "calib.seed must be an integer, got 'abc'"),
    _c("calib", "dataset-unknown", "method=wanda calib.dataset=c4", "unknown corpus 'c4'"),
    _c("calib", "split-not-local", "method=wanda calib.split=train", "no local file"),
    _c("calib", "calib-param-typo", "method=wanda calib.nsampls=4", "unknown key 'calib.nsampls'", "did you mean 'calib.nsamples'"),
    _c("calib", "trajectory-for-text", "method=wanda calib=dit-trajectory", "diffusion"),
    # -- tracker --------------------------------------------------------------------------------
    _c("tracker", "tracker-unknown", "tracker=nope", "unknown tracker 'nope'"),
    _c("tracker", "wandb-mode", "tracker=wandb tracker.mode=foo", "mode must be one of 'offline', 'online', 'disabled', got 'foo'"),
    _c("tracker", "wandb-param-typo", "tracker=wandb tracker.projet=x", "unknown parameter 'projet'", "did you mean 'project'"),
    _c("tracker", "wandb-project-list", "tracker=wandb tracker.project=[a,b]", "project must be a string"),
    # -- top level ------------------------------------------------------------------------------
    _c("top", "seed-string", "seed=abc", "seed must be an integer, got 'abc'"),
    _c("top", "seed-float", "seed=1.5", "seed must be an integer, got 1.5"),
    _c("top", "force-maybe", "force=maybe", "force must be true or false, got 'maybe'"),
    _c("top", "fuse-stages-maybe", "fuse_stages=maybe", "fuse_stages must be true or false, got 'maybe'"),
    _c("top", "threads-zero", "threads=0", "threads must be >= 1"),
    _c("top", "threads-negative", "threads=-2", "threads must be >= 1"),
    _c("top", "threads-string", "threads=abc", "threads must be an integer, got 'abc'"),
    _c("top", "unknown-key", "sed=1", "unknown key 'sed'", "did you mean 'seed'"),
    _c("top", "unknown-key-appended", "+sed=1", "unknown key 'sed'", "did you mean 'seed'"),
    _c("top", "unknown-paths-key", "paths.result_dir=x", "unknown key 'paths.result_dir'", "did you mean 'paths.results_dir'"),
    _c("top", "device-cuda", "device=cuda", "CUDA"),
    _c("top", "device-unknown", "device=tpu", "device"),
    _c("top", "offload-on-cpu", "offload=true", "offload=true keeps the weights in CPU memory"),
    _c("top", "save-dir-under-file", "save_dir={file}/models", "save_dir"),
    _c("top", "results-dir-under-file", "paths.results_dir={file}/results", "paths.results_dir"),
    _c("top", "cache-dir-under-file", "paths.cache_dir={file}/cache", "paths.cache_dir"),
    _c("top", "experiment-unknown", "experiment=nope", "unknown experiment 'nope'"),
    _c("top", "launcher-unknown", "hydra/launcher=nope", "unknown launcher 'nope'"),
    # -- data -----------------------------------------------------------------------------------
    _c("data", "data-dir-empty", "paths.data_dir=", "paths.data_dir is empty"),
    _c("data", "data-dir-missing", "paths.data_dir=/nonexistent/data", "data dir '/nonexistent/data' does not exist"),
    _c("data", "data-dir-is-file", "paths.data_dir={file}", "does not exist"),
    _c("data", "data-file-missing", "paths.data_dir={data_missing}", "expected file"),
    _c("data", "data-file-not-utf8", "paths.data_dir={data_nonutf8}", "not valid UTF-8"),
    _c("data", "data-file-truncated", "paths.data_dir={data_trunc}", "too short"),
    _c("data", "data-file-empty", "paths.data_dir={data_empty}", "is empty"),
    _c("data", "calib-file-not-utf8", "method=wanda paths.data_dir={data_calib_nonutf8}", "not valid UTF-8"),
]


def make_fixtures(tmp: Path) -> dict[str, str]:
    """The files the placeholders name (created once per table run)."""
    tmp.mkdir(parents=True, exist_ok=True)
    regular = tmp / "regular-file"
    regular.write_text("not a directory\n")
    out = {"tmp": str(tmp), "file": str(regular), "data": str(FIXTURE_DATA_DIR)}

    def data_dir(name: str, test_bytes: bytes | None = None, valid_bytes: bytes | None = None, drop: bool = False) -> str:
        root = tmp / name
        shutil.copytree(FIXTURE_DATA_DIR, root, dirs_exist_ok=True)
        wiki = root / "wikitext-2-raw"
        if drop:
            (wiki / "wiki.test.raw").unlink()
        if test_bytes is not None:
            (wiki / "wiki.test.raw").write_bytes(test_bytes)
        if valid_bytes is not None:
            (wiki / "wiki.valid.raw").write_bytes(valid_bytes)
        return str(root)

    text = (FIXTURE_DATA_DIR / "wikitext-2-raw" / "wiki.test.raw").read_bytes()
    out["data_missing"] = data_dir("data-missing", drop=True)
    out["data_nonutf8"] = data_dir("data-nonutf8", test_bytes=text[:2000] + b"\xff\xfe\xfa" + text[2000:])
    out["data_trunc"] = data_dir("data-trunc", test_bytes=text[:100])
    out["data_empty"] = data_dir("data-empty", test_bytes=b"")
    out["data_calib_nonutf8"] = data_dir("data-calib-nonutf8", valid_bytes=b"\xc3" + text)
    for name, config in (("hf_noconfig", None), ("hf_badjson", "{not json"), ("hf_bert", json.dumps({"model_type": "bert"}))):
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        if config is not None:
            (folder / "config.json").write_text(config)
        out[name] = str(folder)
    return out


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def argv_for(case: Case, fixtures: dict[str, str], tmp: Path) -> list[str]:
    """BASE with the case's arguments replacing base arguments of the same key."""
    values = {**fixtures, "tmp": str(tmp)}
    own = {_key(a) for a in case.args}
    if any(a.startswith(("pipeline=", "method=")) for a in case.args):
        own.add("method")
    argv = [a for a in BASE if _key(a) not in own] + list(case.args)
    return [re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), a) for a in argv]


class WeightsLoaded(Exception):
    """Raised by the patched loaders when ``stop_at_load``: validation let the case through."""


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    loaded: bool
    seconds: float
    escaped: str | None = None  # an exception that left cli.main
    records: list[dict] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("slimbench: error:")]

    @property
    def traceback(self) -> bool:
        return self.escaped is not None or "Traceback (most recent call last)" in self.stdout + self.stderr

    def classify(self) -> str:
        """before-load (one clear line, no record) | other-before-load | after-load | traceback | accepted."""
        if any(r.get("status") == "ok" for r in self.records) or (self.code == 0 and not self.traceback):
            return "accepted"
        if self.traceback:
            return "traceback"
        if self.loaded or self.records:
            return "after-load"
        if self.code == 2 and len(self.error_lines) == 1:
            return "before-load"
        return "other-before-load"


def run_case(case: Case, fixtures: dict[str, str], tmp: Path, stop_at_load: bool = True) -> Outcome:
    """Run one case through ``slimbench.cli.main`` in this process, capturing its output."""
    from slimbench import cli
    from slimbench.models import loaders

    tmp.mkdir(parents=True, exist_ok=True)
    argv = argv_for(case, fixtures, tmp)
    state = {"loaded": False}
    originals = {name: cls.load for name, cls in loaders.LOADERS.items()}

    def patched(original):
        def load(self, *args, **kwargs):
            state["loaded"] = True
            if stop_at_load:
                raise WeightsLoaded("validation let this case through to loading weights")
            return original(self, *args, **kwargs)
        return load

    for name, cls in loaders.LOADERS.items():
        cls.load = patched(originals[name])
    out, err = io.StringIO(), io.StringIO()
    escaped, code = None, None
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    except BaseException as exc:  # noqa: BLE001 - a case may crash the CLI; that is what we measure
        escaped = f"{type(exc).__name__}: {exc}"
    finally:
        seconds = time.perf_counter() - start
        for name, cls in loaders.LOADERS.items():
            cls.load = originals[name]
    records = []
    for path in sorted((tmp / "results" / "records").glob("*.json")) if (tmp / "results" / "records").is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:
            records.append({"status": "unreadable"})
    return Outcome(code, out.getvalue(), err.getvalue(), state["loaded"], seconds, escaped, records)
