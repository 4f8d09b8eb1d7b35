"""Token perplexity, GPTQ/SparseGPT/Wanda protocol.

The corpus rows are joined (WikiText-2: "\\n\\n"), tokenized once, and cut into
non-overlapping windows of ``seqlen`` tokens (a partial last window is dropped). Each window
is one forward pass; its loss is the mean NLL of tokens 2..seqlen given the ones before.
Perplexity = exp(mean over windows of the window mean NLL). ``max_windows`` evaluates only
the first windows and is part of the protocol fingerprint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from slimbench.data.corpora import check_holds, load_corpus, resolve_corpus
from slimbench.data.sampler import tokenize_stream
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric
from slimbench.params import check_params, param


@dataclass(frozen=True)
class PerplexityConfig:
    dataset: str = param("wikitext2", "corpus (wikitext2, ptb)")
    split: str = param("test", "split of the corpus")
    seqlen: int = param(2048, "tokens per non-overlapping window", ge=2)
    max_windows: int | None = param(None, "evaluate only the first windows (null = all); part of the fingerprint", ge=1, nullable=True)
    batch_size: int = param(1, "windows per forward pass", ge=1)

    def __post_init__(self) -> None:
        check_params(self)


def window_nlls(bundle, windows: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """Mean token NLL of each window [n_windows, seqlen] -> [n_windows] (float64), by the model
    kind's objective (``bundle.io.objective``); runtime hooks' state is reset per batch."""
    out = torch.empty(windows.shape[0], dtype=torch.float64, device="cpu")  # host-side results
    with torch.inference_mode(), tqdm(total=windows.shape[0], desc=desc, unit="win", mininterval=2.0) as bar:
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size]  # [B, T]
            bundle.hooks.reset_state()
            out[start : start + ids.shape[0]] = bundle.io.objective(bundle.model, bundle.io.sample(ids)).double().cpu()
            bar.update(ids.shape[0])
    return out


def _check_context(seqlen: int, max_positions: int | None) -> None:
    if max_positions is not None and seqlen > max_positions:
        raise ConfigError(f"perplexity seqlen {seqlen} exceeds the model's context (max_position_embeddings {max_positions})")


@EVALUATORS.register("perplexity")
class Perplexity:
    name = "perplexity"
    version = "1"
    Config = PerplexityConfig
    kinds = ("causal_lm",)

    def __init__(self, config: PerplexityConfig) -> None:
        self.config = config

    def check(self, ctx: EvalContext) -> dict:
        _check_context(self.config.seqlen, ctx.shape.max_positions)
        self._ref = resolve_corpus(self.config.dataset, self.config.split, ctx.data_dir)
        check_holds(self._ref, self.config.seqlen, "one perplexity window of seqlen")
        return {f"{self.config.dataset}/{self.config.split}": self._ref.fingerprint()}

    def __call__(self, bundle, ctx: EvalContext) -> EvalResult:
        cfg = self.config
        _check_context(cfg.seqlen, getattr(bundle.model.config, "max_position_embeddings", None))
        corpus = load_corpus(self._ref)
        ids = tokenize_stream(bundle.tokenizer, corpus)
        n_windows = ids.numel() // cfg.seqlen
        if n_windows == 0:
            raise ConfigError(f"{cfg.dataset} {cfg.split} has {ids.numel()} tokens, fewer than one window of {cfg.seqlen}")
        if cfg.max_windows is not None:
            n_windows = min(n_windows, cfg.max_windows)
        windows = ids[: n_windows * cfg.seqlen].view(n_windows, cfg.seqlen)

        start = time.perf_counter()
        nlls = window_nlls(bundle, windows, cfg.batch_size, desc=f"perplexity {cfg.dataset}/{cfg.split}")
        elapsed = time.perf_counter() - start

        mean_nll = nlls.mean().item()
        nll_se = (nlls.std(unbiased=True).item() / math.sqrt(n_windows)) if n_windows > 1 else None
        ppl = math.exp(mean_nll)
        metrics = [
            Metric("perplexity", ppl, stderr=None if nll_se is None else ppl * nll_se, higher_is_better=False),
            Metric("nll", mean_nll, stderr=nll_se, higher_is_better=False, unit="nats/token"),
            Metric("eval_tokens_per_s", n_windows * cfg.seqlen / elapsed, higher_is_better=True, unit="tokens/s"),
        ]
        protocol = {
            **self._ref.fingerprint(),
            "text_sha256": corpus.text_sha256,
            "tokens_in_stream": int(ids.numel()),
            "seqlen": cfg.seqlen,
            "windows": n_windows,
            "max_windows": cfg.max_windows,
            "tokens_evaluated": n_windows * cfg.seqlen,
            "aggregation": "exp(mean of window mean NLL), non-overlapping windows, partial last dropped",
            "batch_size": cfg.batch_size,
        }
        return EvalResult(metrics, protocol, details={"wall_time_s": elapsed})
