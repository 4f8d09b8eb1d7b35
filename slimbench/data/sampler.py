"""Seeded calibration windows: the GPTQ/Wanda loader's draw on a joined token stream.

``random.seed(seed)`` then, per sample, ``i = random.randint(0, n_tokens - seqlen - 1)`` and the
window ``ids[i : i + seqlen]``. A private ``random.Random(seed)`` gives the same sequence as the
module-level generator without touching global state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from slimbench.data.corpora import Corpus, CorpusRef, load_corpus
from slimbench.errors import ConfigError


@dataclass(frozen=True)
class CalibConfig:
    dataset: str = "wikitext2"
    split: str = "validation"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nsamples < 1:
            raise ConfigError(f"calib.nsamples must be >= 1, got {self.nsamples}")
        if self.seqlen < 2:
            raise ConfigError(f"calib.seqlen must be >= 2, got {self.seqlen}")


@dataclass
class CalibrationSet:
    """Token windows ``input_ids`` [nsamples, seqlen] and how they were drawn."""

    input_ids: torch.Tensor
    config: CalibConfig
    corpus: CorpusRef
    starts: list[int] = field(default_factory=list)
    cache_dir: Path | None = None  # where shared calibration statistics are cached
    cache_reads: list[str] = field(default_factory=list)  # statistics served from that cache (for the record)

    def samples(self) -> Iterator[dict]:
        """Model inputs, one calibration window at a time."""
        for i in range(self.input_ids.shape[0]):
            yield {"input_ids": self.input_ids[i : i + 1], "use_cache": False}

    def fingerprint(self) -> dict:
        c = self.config
        return {
            **self.corpus.fingerprint(),
            "nsamples": c.nsamples,
            "seqlen": c.seqlen,
            "seed": c.seed,
            "draw": "random.seed(seed); randint(0, n_tokens - seqlen - 1)",
        }


def draw_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Windows of ``seqlen`` tokens from the 1-D stream ``ids`` at seeded random starts."""
    n_tokens = ids.numel()
    if n_tokens < seqlen + 2:
        raise ConfigError(f"calibration corpus has {n_tokens} tokens, fewer than seqlen + 2 = {seqlen + 2}")
    rng = random.Random(seed)
    starts = [rng.randint(0, n_tokens - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s : s + seqlen] for s in starts]), starts


def tokenize_stream(tokenizer, corpus: Corpus) -> torch.Tensor:
    """Tokenize the joined corpus text once, as the reference loaders do: 1-D LongTensor."""
    enc = tokenizer(corpus.text, return_tensors="pt", add_special_tokens=True, verbose=False)
    return enc["input_ids"][0]


def build_calibration_set(config: CalibConfig, ref: CorpusRef, tokenizer) -> CalibrationSet:
    ids = tokenize_stream(tokenizer, load_corpus(ref))
    windows, starts = draw_windows(ids, config.nsamples, config.seqlen, config.seed)
    return CalibrationSet(input_ids=windows, config=config, corpus=ref, starts=starts)
