"""Calibration sets: seeded token windows for language models, sampling trajectories for DiTs.

Language models: the GPTQ/Wanda loader's draw on a joined token stream.

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
from slimbench.params import check_params, param


@dataclass(frozen=True)
class CalibConfig:
    dataset: str = param("wikitext2", "text corpus the windows are drawn from (wikitext2, ptb)")
    split: str = param("validation", "its split (train is not available offline)")
    nsamples: int = param(128, "windows drawn", ge=1)
    seqlen: int = param(2048, "tokens per window", ge=2)
    seed: int = param(0, "seed of the draw: random.seed(seed); randint(0, n_tokens - seqlen - 1) per window")

    def __post_init__(self) -> None:
        check_params(self)


@dataclass(frozen=True)
class TrajectoryCalibConfig:
    """Calibration of a diffusion model: the denoiser inputs along ``steps`` DDIM steps of
    ``nsamples`` images (seeded noise and classes)."""

    dataset: str = param("trajectory", "diffusion models calibrate on their own sampling trajectories", choices=("trajectory",))
    nsamples: int = param(16, "images sampled", ge=1)
    steps: int = param(10, "DDIM steps (one calibration sample per step)", ge=1)
    seed: int = param(0, "seed of the noise and the classes")

    def __post_init__(self) -> None:
        check_params(self)


@dataclass
class CalibrationSet:
    """Calibration samples of any model kind: model keyword inputs, one dict per sample (batch first).

    ``tokens`` keeps the token windows [nsamples, seqlen] of a language model (None otherwise);
    ``recipe`` says how the samples were drawn (it is the set's fingerprint in records and cache keys).
    """

    inputs: list[dict]
    recipe: dict
    tokens: torch.Tensor | None = None
    cache_dir: Path | None = None  # where shared calibration statistics are cached
    cache_reads: list[str] = field(default_factory=list)  # statistics served from that cache (for the record)

    def samples(self, limit: int | None = None) -> Iterator[dict]:
        """Model inputs, one calibration sample at a time (the first ``limit`` ones)."""
        yield from self.inputs[:limit]

    def __len__(self) -> int:
        return len(self.inputs)

    def fingerprint(self) -> dict:
        return dict(self.recipe)


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
    """Token windows drawn from a corpus (the language-model calibration set)."""
    from slimbench.models.io import CausalLMIO

    ids = tokenize_stream(tokenizer, load_corpus(ref))
    windows, starts = draw_windows(ids, config.nsamples, config.seqlen, config.seed)
    recipe = {**ref.fingerprint(), "nsamples": config.nsamples, "seqlen": config.seqlen, "seed": config.seed,
              "draw": "random.seed(seed); randint(0, n_tokens - seqlen - 1)"}
    io = CausalLMIO()
    return CalibrationSet(inputs=[io.sample(windows[i : i + 1]) for i in range(len(windows))], recipe=recipe, tokens=windows)


def build_trajectory_set(config: TrajectoryCalibConfig, bundle) -> CalibrationSet:
    """Denoiser inputs along the (unmodified) diffusion model's own sampling trajectory."""
    inputs = list(bundle.io.trajectory(bundle.model, config.nsamples, config.steps, config.seed))
    recipe = {"dataset": "trajectory", "nsamples": config.nsamples, "steps": config.steps, "seed": config.seed,
              "draw": "DDIM (eta 0) of nsamples images with seeded noise and classes; one sample per step"}
    return CalibrationSet(inputs=inputs, recipe=recipe)
