"""Text corpora for perplexity and calibration, read from the data dir or the Hugging Face hub.

Each corpus is described by data (where its files are, how rows are read, how rows are
joined), never by code per dataset. The rows reproduce the Hugging Face datasets exactly so
that a local file and the hub give the same token stream:

* WikiText-2 raw: the raw file's lines; a line holding a single space is the empty row "",
  every other line keeps its trailing "\\n"; rows joined with "\\n\\n" (GPTQ/SparseGPT/Wanda).
* PTB (``ptb_text_only``): each line stripped; rows joined with " " (GPTQ/SparseGPT).

The fingerprint of a corpus is the sha256 of the file it was read from (local) and of the
exact text handed to the tokenizer (both sources).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from slimbench.errors import ConfigError, DataUnavailableError
from slimbench.registry import Registry


def _wikitext_rows(raw: str) -> list[str]:
    lines = raw.splitlines(keepends=True)
    return ["" if line == " \n" else line for line in lines]


def _ptb_rows(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines()]


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    description: str
    files: dict[str, str]  # split -> path relative to the data dir
    row_reader: Callable[[str], list[str]]
    joiner: str
    hub_path: str
    hub_name: str | None
    hub_field: str
    hub_splits: dict[str, str]  # our split name -> hub split name


CORPORA: Registry[CorpusSpec] = Registry("corpus")
CORPORA.register(
    "wikitext2",
    CorpusSpec(
        name="wikitext2",
        description="WikiText-2 raw v1",
        files={"test": "wikitext-2-raw/wiki.test.raw", "validation": "wikitext-2-raw/wiki.valid.raw"},
        row_reader=_wikitext_rows,
        joiner="\n\n",
        hub_path="wikitext",
        hub_name="wikitext-2-raw-v1",
        hub_field="text",
        hub_splits={"test": "test", "validation": "validation", "train": "train"},
    ),
)
CORPORA.register(
    "ptb",
    CorpusSpec(
        name="ptb",
        description="Penn Treebank (Mikolov), ptb_text_only",
        files={"test": "ptb/ptb.test.txt", "validation": "ptb/ptb.valid.txt"},
        row_reader=_ptb_rows,
        joiner=" ",
        hub_path="ptb_text_only",
        hub_name="penn_treebank",
        hub_field="sentence",
        hub_splits={"test": "test", "validation": "validation", "train": "train"},
    ),
)


@dataclass(frozen=True)
class CorpusRef:
    """Where a corpus split comes from, resolved before any weights load (a local file is
    hashed and checked to be non-empty UTF-8 text then)."""

    name: str
    split: str
    source: str  # "local" | "hub"
    path: str | None
    file_sha256: str | None
    size_bytes: int | None = field(default=None, compare=False)  # local files (not part of the fingerprint)

    def fingerprint(self) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "source": self.source,
            "file_sha256": self.file_sha256,
            **({"hub": self.path} if self.source == "hub" else {}),
        }


@dataclass(frozen=True)
class Corpus:
    ref: CorpusRef
    rows: list[str]
    text: str

    @property
    def text_sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def check_data_dir(data_dir: str | None) -> Path | None:
    """The data dir as a Path; a clear error if it is set but missing."""
    if data_dir is None or data_dir == "null":
        return None
    if not str(data_dir).strip():
        raise DataUnavailableError("paths.data_dir is empty: set it to a directory holding the datasets, or to null to use the "
                                   "Hugging Face hub (is SLIMBENCH_DATA_DIR set but empty?)")
    path = Path(str(data_dir)).expanduser()
    if not path.is_dir():
        raise DataUnavailableError(
            f"data dir {str(path)!r} does not exist (set paths.data_dir or SLIMBENCH_DATA_DIR to a "
            "directory holding the datasets, or to null to use the Hugging Face hub)"
        )
    return path


@lru_cache(maxsize=64)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:  # size/mtime key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_file(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _text_problem(path: str, size: int, mtime_ns: int) -> str | None:  # size/mtime key the cache
    if size == 0:
        return "is empty"
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "at its end (truncated?)" if exc.end >= len(data) else f"at byte {exc.start}"
        return f"is not valid UTF-8 ({data[exc.start:exc.end]!r} {where}): a damaged or truncated copy?"
    return None


def check_text_file(path: Path, what: str) -> None:
    """A local text file the run will read: non-empty, valid UTF-8 (checked once per file version)."""
    stat = path.stat()
    problem = _text_problem(str(path), stat.st_size, stat.st_mtime_ns)
    if problem:
        raise DataUnavailableError(f"{what}: {str(path)!r} {problem}")


def check_holds(ref: CorpusRef, tokens: int, what: str) -> None:
    """A local corpus file can give ``tokens`` tokens: a token is at least one byte (byte-level
    and SentencePiece tokenizers), plus up to two special tokens, so fewer bytes cannot."""
    if ref.size_bytes is not None and ref.size_bytes + 2 < tokens:
        raise DataUnavailableError(f"{ref.name} {ref.split}: {ref.path!r} is too short ({ref.size_bytes} bytes) for {what} "
                                   f"({tokens} tokens); is it truncated?")


def resolve_corpus(name: str, split: str, data_dir: str | None) -> CorpusRef:
    """Locate a corpus split; raises before anything heavy happens if it is unavailable."""
    try:
        spec = CORPORA.get(name)
    except KeyError as exc:
        raise ConfigError(str(exc)) from None
    root = check_data_dir(data_dir)
    if root is not None:
        rel = spec.files.get(split)
        if rel is None:
            raise DataUnavailableError(
                f"{name} split {split!r} has no local file (local splits: {', '.join(spec.files)}); "
                "use a split that is available offline or set paths.data_dir=null to use the hub"
            )
        path = root / rel
        if not path.is_file():
            raise DataUnavailableError(f"{name} {split}: expected file {str(path)!r} in the data dir")
        check_text_file(path, f"{name} {split}")
        return CorpusRef(name, split, "local", str(path), sha256_file(path), path.stat().st_size)
    if split not in spec.hub_splits:
        raise ConfigError(f"{name} has no split {split!r} (splits: {', '.join(spec.hub_splits)})")
    hub = f"{spec.hub_path}/{spec.hub_name}" if spec.hub_name else spec.hub_path
    return CorpusRef(name, split, "hub", hub, None)


def load_corpus(ref: CorpusRef) -> Corpus:
    spec = CORPORA.get(ref.name)
    if ref.source == "local":
        raw = Path(ref.path).read_text(encoding="utf-8")
        rows = spec.row_reader(raw)
    else:
        rows = _load_hub_rows(spec, ref.split)
    return Corpus(ref=ref, rows=rows, text=spec.joiner.join(rows))


def _load_hub_rows(spec: CorpusSpec, split: str) -> list[str]:
    try:
        from datasets import load_dataset

        data = load_dataset(spec.hub_path, spec.hub_name, split=spec.hub_splits[split])
    except Exception as exc:  # network errors come in many types
        raise DataUnavailableError(
            f"could not load {spec.name} {split} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); set paths.data_dir to a local copy"
        ) from exc
    return list(data[spec.hub_field])
