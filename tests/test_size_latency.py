import torch

from slimbench.evaluation.latency import kv_cache_bytes, percentile
from slimbench.evaluation.size import footprint


def test_footprint_counts_tied_embeddings_once(tiny_bundle):
    bundle = tiny_bundle("tiny-llama")
    model = bundle.model
    fp = footprint(model, bundle.adapter)
    assert fp.tied_embeddings
    assert fp.params == sum(p.numel() for p in model.parameters())  # parameters() dedupes
    emb = model.get_input_embeddings().weight
    assert fp.bytes == sum(p.numel() * 4 for p in model.parameters())
    assert fp.weight_bytes_per_decode_step == fp.bytes and fp.embedding_bytes == emb.numel() * 4
    linears = bundle.adapter.linear_paths(model)
    assert len(linears) == 2 * 7
    assert fp.linear_params == sum(m.weight.numel() for m in linears.values())
    assert fp.bits_per_weight == 32.0 and fp.sparsity == 0.0


def test_kv_cache_bytes_match_the_geometry(tiny_bundle):
    bundle = tiny_bundle("tiny-llama")
    heads, kv_heads, head_dim = bundle.adapter.attention_geometry(bundle.model.config)
    assert (heads, kv_heads, head_dim) == (4, 2, 16)
    with torch.no_grad():
        out = bundle.model(torch.randint(0, 200, (1, 10)), use_cache=True)
    layers = bundle.model.config.num_hidden_layers
    assert kv_cache_bytes(out.past_key_values) == layers * 2 * kv_heads * head_dim * 10 * 4


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == 4.6
    assert percentile([7.0], 90) == 7.0
