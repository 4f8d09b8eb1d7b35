import random

import pytest
import torch

from slimbench.data.corpora import load_corpus, resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set, draw_windows
from slimbench.errors import ConfigError, DataUnavailableError
from slimbench.models.tokenizers import byte_tokenizer

WIKI_TEST_SHA = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"


def test_wikitext2_rows_match_the_hugging_face_dataset(data_dir):
    corpus = load_corpus(resolve_corpus("wikitext2", "test", data_dir))
    assert corpus.ref.file_sha256 == WIKI_TEST_SHA
    assert len(corpus.rows) == 4358  # the HF test split's row count
    assert corpus.rows[0] == "" and corpus.rows[1] == " = Robert Boulter = \n"
    assert "" in corpus.rows and all(r == "" or r.endswith("\n") for r in corpus.rows)
    assert corpus.text == "\n\n".join(corpus.rows)


def test_ptb_rows_are_stripped_lines_joined_with_spaces(data_dir):
    corpus = load_corpus(resolve_corpus("ptb", "test", data_dir))
    assert len(corpus.rows) == 3761
    assert all(r == r.strip() for r in corpus.rows)
    assert corpus.text == " ".join(corpus.rows)


def test_missing_data_dir_and_missing_split_are_clear_errors(tmp_path, text_dir):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        resolve_corpus("wikitext2", "test", str(tmp_path / "nope"))
    with pytest.raises(DataUnavailableError, match="no local file"):
        resolve_corpus("wikitext2", "train", text_dir)
    with pytest.raises(DataUnavailableError, match="expected file"):
        resolve_corpus("wikitext2", "test", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown corpus 'wiki'"):
        resolve_corpus("wiki", "test", text_dir)


def test_calibration_draw_is_the_gptq_loader_draw():
    ids = torch.arange(10_000)
    windows, starts = draw_windows(ids, nsamples=5, seqlen=64, seed=0)
    random.seed(0)  # the reference loader uses the module-level generator
    expected = [random.randint(0, ids.numel() - 64 - 1) for _ in range(5)]
    assert starts == expected
    assert torch.equal(windows[2], ids[expected[2] : expected[2] + 64])
    assert windows.shape == (5, 64)


def test_calibration_set_is_seeded_and_fingerprinted(text_dir):
    ref = resolve_corpus("wikitext2", "validation", text_dir)
    cfg = CalibConfig(nsamples=4, seqlen=128, seed=3)
    a = build_calibration_set(cfg, ref, byte_tokenizer())
    b = build_calibration_set(cfg, ref, byte_tokenizer())
    c = build_calibration_set(CalibConfig(nsamples=4, seqlen=128, seed=4), ref, byte_tokenizer())
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert len(a) == 4 and torch.equal(next(a.samples())["input_ids"], a.tokens[:1])  # one window per sample
    fp = a.fingerprint()
    assert fp["file_sha256"] == ref.file_sha256 and fp["nsamples"] == 4 and fp["seed"] == 3


def test_calibration_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        CalibConfig(nsamples=0)
