import math

import torch
import torch.nn.functional as F

from slimbench.data.corpora import load_corpus, resolve_corpus
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig


def test_harness_perplexity_equals_a_plain_loop(tiny_bundle, text_dir):
    bundle = tiny_bundle("tiny-llama")
    ev = Perplexity(PerplexityConfig(seqlen=128, max_windows=3, batch_size=2))
    ctx = EvalContext(data_dir=text_dir, device="cpu", seed=0, threads=1)
    ev.check(ctx)
    result = ev(bundle, ctx)
    ppl = next(m.value for m in result.metrics if m.name == "perplexity")

    # independent computation: the reference loop of GPTQ's llama_eval
    text = "\n\n".join(load_corpus(resolve_corpus("wikitext2", "test", text_dir)).rows)
    ids = bundle.tokenizer(text, return_tensors="pt").input_ids
    nlls = []
    with torch.no_grad():
        for i in range(3):
            batch = ids[:, i * 128 : (i + 1) * 128]
            logits = bundle.model(batch).logits
            loss = F.cross_entropy(logits[0, :-1], batch[0, 1:])
            nlls.append(loss.float() * 128)
    expected = math.exp(torch.stack(nlls).sum().item() / (3 * 128))
    assert abs(ppl - expected) / expected < 1e-5
    assert result.protocol["windows"] == 3 and result.protocol["tokens_evaluated"] == 384
