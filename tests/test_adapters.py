"""Every registered adapter finds its blocks, linear roles, norms and geometry on a tiny model."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slimbench.models.adapters import ADAPTERS

TINY = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "mixtral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4),
    "olmoe": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2),
}


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_adapter_matches_the_transformers_model(model_type):
    adapter = ADAPTERS.get(model_type)
    config = AutoConfig.for_model(model_type, vocab_size=64, **TINY[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    blocks = adapter.get_blocks(model)
    assert len(blocks) == 2
    linears = adapter.block_linears(blocks[0])
    assert set(linears) == set(adapter.linears), f"missing roles {set(adapter.linears) - set(linears)}"
    for role in adapter.norms:
        assert adapter.norm(blocks[0], role) is not None, role
    heads, kv, head_dim = adapter.attention_geometry(model.config)
    assert heads == 4 and heads % kv == 0
    q = linears.get("q") or linears["qkv"]
    assert adapter.weight_matrix(q).shape[1] == (config.hidden_size if hasattr(config, "hidden_size") else config.n_embd)
    if "q" in linears:
        assert adapter.weight_matrix(linears["q"]).shape[0] == heads * head_dim
        assert adapter.weight_matrix(linears["k"]).shape[0] == kv * head_dim
    if adapter.moe is not None:
        from slimbench.models.adapters import get_path

        moe = get_path(blocks[0], adapter.moe.block)
        assert get_path(moe, adapter.moe.router) is not None and get_path(moe, adapter.moe.experts) is not None
        assert getattr(model.config, adapter.moe.num_experts_attr) == 4
    assert len(adapter.linear_paths(model)) == 2 * len(adapter.linears)
    for group in adapter.input_groups:
        assert set(group) <= set(adapter.linears)
