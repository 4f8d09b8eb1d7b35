"""Offline tokenizers for models built from configs (no download, built in milliseconds)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_tokenizer():
    """Byte-level tokenizer: 256 byte tokens + <|bos|> <|eos|> <|pad|>; BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<|bos|>", "<|eos|>", "<|pad|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", vocab["<|bos|>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", model_max_length=1 << 20
    )


TOKENIZERS = {"bytes": byte_tokenizer}
