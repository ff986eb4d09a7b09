"""LLaMA family (transformers `LlamaForCausalLM`: LLaMA 1/2, OpenLLaMA, TinyLlama) <-> openseason key map.

Hugging Face stores q_proj, k_proj and v_proj separately; our fused qkv is their row-wise
concatenation. No per-head permutation is needed: the HF LLaMA weights were already permuted to the
rotate-half pairing our rotary embedding uses.
"""
from __future__ import annotations

import torch

from ..config import Config
from ..errors import CheckpointError
from .keymap import first_id, hf_value, rename, rope_settings, torch_dtype_name

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
ALIASES: dict[str, str] = {}

_TOP = {"embed.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_LAYER = {"norm_1.weight": "input_layernorm.weight", "norm_2.weight": "post_attention_layernorm.weight",
          "attn.proj.weight": "self_attn.o_proj.weight", "attn.proj.bias": "self_attn.o_proj.bias",
          "mlp.fc_1.weight": "mlp.gate_proj.weight", "mlp.fc_1.bias": "mlp.gate_proj.bias",
          "mlp.fc_2.weight": "mlp.up_proj.weight", "mlp.fc_2.bias": "mlp.up_proj.bias",
          "mlp.proj.weight": "mlp.down_proj.weight", "mlp.proj.bias": "mlp.down_proj.bias"}
_PREFIX = "model.layers.{i}."


def config_from_hf(hf: dict, where: str) -> dict:
    hidden = int(hf_value(hf, "hidden_size", where, required=True))
    heads = int(hf_value(hf, "num_attention_heads", where, required=True))
    act = hf_value(hf, "hidden_act", where, "silu")
    if act != "silu":
        raise CheckpointError(f"hidden_act {act!r} is not supported for LLaMA (only 'silu')", where=where)
    attn_bias = bool(hf_value(hf, "attention_bias", where, False))
    mlp_bias = bool(hf_value(hf, "mlp_bias", where, False))
    if attn_bias != mlp_bias:
        raise CheckpointError(f"attention_bias={attn_bias} with mlp_bias={mlp_bias} is not supported "
                              "(biases are all on or all off)", where=where)
    fraction, base = rope_settings(hf, where, None, "rope_theta", default_fraction=1.0)
    return dict(
        family="llama", n_embd=hidden, n_head=heads,
        n_query_groups=int(hf_value(hf, "num_key_value_heads", where, heads)),
        head_size=int(hf_value(hf, "head_dim", where, hidden // heads)),
        n_layer=int(hf_value(hf, "num_hidden_layers", where, required=True)),
        intermediate_size=int(hf_value(hf, "intermediate_size", where, required=True)),
        padded_vocab_size=int(hf_value(hf, "vocab_size", where, required=True)),
        block_size=int(hf_value(hf, "max_position_embeddings", where, 2048)),
        rotary_percentage=fraction, rope_base=base, parallel_residual=False,
        bias=attn_bias, lm_head_bias=False, norm_class="RMSNorm",
        norm_eps=float(hf_value(hf, "rms_norm_eps", where, 1e-6)), mlp_class="LLaMAMLP",
        tie_embeddings=bool(hf_value(hf, "tie_word_embeddings", where, False)),
        bos_token_id=first_id(hf.get("bos_token_id")), eos_token_id=first_id(hf.get("eos_token_id")),
        add_bos_token=True)


def check_expressible(config: Config, where: str) -> None:
    problems = []
    if config.norm_class != "RMSNorm":
        problems.append(f"norm_class {config.norm_class!r} (needs RMSNorm)")
    if config.mlp_class != "LLaMAMLP":
        problems.append(f"mlp_class {config.mlp_class!r} (needs LLaMAMLP)")
    if config.parallel_residual:
        problems.append("parallel_residual=True")
    if config.rotary_percentage != 1.0:
        problems.append(f"rotary_percentage={config.rotary_percentage} (LLaMA rotates every dimension)")
    if config.lm_head_bias:
        problems.append("lm_head_bias=True")
    if problems:
        raise CheckpointError(f"cannot express as {ARCHITECTURE}: {'; '.join(problems)}", where=where)


def config_to_hf(config: Config, state: dict[str, torch.Tensor]) -> dict:
    # Top-level rope_theta, as released LLaMA configs have it: read by transformers 4 and 5.
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.padded_vocab_size, "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups, "head_dim": config.head_size,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.block_size,
        "rope_theta": config.rope_base, "rms_norm_eps": config.norm_eps, "hidden_act": "silu",
        "attention_bias": config.bias, "mlp_bias": config.bias, "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "pretraining_tp": 1, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "torch_dtype": torch_dtype_name(state),
    }


def hf_names(key: str, config: Config) -> list[str]:
    if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
        layer, kind = key.split(".")[1], key.rsplit(".", 1)[1]
        return [f"{_PREFIX.format(i=layer)}self_attn.{p}_proj.{kind}" for p in "qkv"]
    return [rename(key, _TOP, _LAYER, _PREFIX)]


def ignorable_hf(config: Config) -> tuple[str, ...]:
    # Some tied checkpoints still carry a copy of the output layer; it is the embedding.
    return ("lm_head.weight",) if config.tie_embeddings else ()


def from_hf(key: str, tensors: list[torch.Tensor], config: Config) -> torch.Tensor:
    return torch.cat(tensors, dim=0) if len(tensors) > 1 else tensors[0]


def to_hf(key: str, tensor: torch.Tensor, config: Config) -> list[torch.Tensor]:
    if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
        q = config.n_head * config.head_size
        kv = config.n_query_groups * config.head_size
        return list(tensor.split((q, kv, kv), dim=0))
    return [tensor]
