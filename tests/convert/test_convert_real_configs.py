"""Released config.json files (as published on the Hub, transformers 4 era) read into the same model
as our named configs: same architecture flags and the exact parameter count, with no weights needed."""
from __future__ import annotations

import json

import pytest

from openseason.config import NAMED_CONFIGS, Config
from openseason.convert import config_from_hf_dir
from openseason.model import count_parameters

# EleutherAI/pythia-70m/config.json
PYTHIA_70M = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
    "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
    "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
    "use_parallel_residual": True, "vocab_size": 50304}
# meta-llama/Llama-2-7b-hf/config.json
LLAMA_2_7B = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000}
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/config.json
TINYLLAMA = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 2048,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.31.0.dev0",
    "use_cache": True, "vocab_size": 32000}

FIELDS = ("family", "block_size", "padded_vocab_size", "n_layer", "n_head", "n_embd", "n_query_groups",
          "head_size", "intermediate_size", "rotary_percentage", "rope_base", "parallel_residual", "bias",
          "norm_class", "norm_eps", "mlp_class", "gelu_approximate", "tie_embeddings", "bos_token_id",
          "eos_token_id", "add_bos_token")


@pytest.mark.parametrize("hf_config, named, params", [
    (PYTHIA_70M, "pythia-70m", 70_426_624),
    (LLAMA_2_7B, "llama-2-7b", 6_738_415_616),
    (TINYLLAMA, "tinyllama-1.1b", None),
])
def test_released_config_matches_named_config(hf_config, named, params, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config, indent=2))
    ours = config_from_hf_dir(tmp_path)
    reference = Config.from_name(named)
    for field in FIELDS:
        assert getattr(ours, field) == getattr(reference, field), field
    assert NAMED_CONFIGS[named]["hf_id"]
    if params is not None:
        assert count_parameters(ours) == params
    assert count_parameters(ours) == count_parameters(reference)
