"""GPT-NeoX / Pythia (transformers `GPTNeoXForCausalLM`) <-> openseason key map.

The one non-trivial tensor is the fused attention projection. Hugging Face interleaves it per head,
rows ordered (head, {q,k,v}, head_dim); ours keeps three contiguous blocks [q | k | v] so a reader
can slice "the key rows" directly. Converting is a transpose of the first two axes of
view(n_head, 3, head_size, ...), for the weight and the bias alike.

The output layer is `embed_out.weight` in released Pythia files and `lm_head.weight` in the
state_dict of recent transformers versions; both are read, and `embed_out.weight` is written
because every transformers version loads it.
"""
from __future__ import annotations

import torch

from ..config import Config
from ..errors import CheckpointError
from .keymap import first_id, hf_value, rename, rope_settings, torch_dtype_name

ARCHITECTURE = "GPTNeoXForCausalLM"
MODEL_TYPE = "gpt_neox"
ALIASES = {"lm_head.weight": "embed_out.weight"}

_TOP = {"embed.weight": "gpt_neox.embed_in.weight",
        "norm_f.weight": "gpt_neox.final_layer_norm.weight",
        "norm_f.bias": "gpt_neox.final_layer_norm.bias",
        "lm_head.weight": "embed_out.weight"}
_LAYER = {"norm_1.weight": "input_layernorm.weight", "norm_1.bias": "input_layernorm.bias",
          "norm_2.weight": "post_attention_layernorm.weight", "norm_2.bias": "post_attention_layernorm.bias",
          "attn.qkv.weight": "attention.query_key_value.weight", "attn.qkv.bias": "attention.query_key_value.bias",
          "attn.proj.weight": "attention.dense.weight", "attn.proj.bias": "attention.dense.bias",
          "mlp.fc.weight": "mlp.dense_h_to_4h.weight", "mlp.fc.bias": "mlp.dense_h_to_4h.bias",
          "mlp.proj.weight": "mlp.dense_4h_to_h.weight", "mlp.proj.bias": "mlp.dense_4h_to_h.bias"}
_PREFIX = "gpt_neox.layers.{i}."

# hidden_act in config.json -> F.gelu(approximate=...)
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh"}


def config_from_hf(hf: dict, where: str) -> dict:
    hidden = int(hf_value(hf, "hidden_size", where, required=True))
    heads = int(hf_value(hf, "num_attention_heads", where, required=True))
    act = hf_value(hf, "hidden_act", where, "gelu")
    if act not in _GELU:
        raise CheckpointError(f"hidden_act {act!r} is not supported for GPT-NeoX", where=where,
                              hint=f"supported: {', '.join(_GELU)}")
    if hf_value(hf, "attention_bias", where, True) is not True:
        raise CheckpointError("attention_bias=false is not supported for GPT-NeoX (its MLP keeps biases)",
                              where=where)
    fraction, base = rope_settings(hf, where, "rotary_pct", "rotary_emb_base", default_fraction=0.25)
    return dict(
        family="gpt_neox", n_embd=hidden, n_head=heads, n_query_groups=heads,
        n_layer=int(hf_value(hf, "num_hidden_layers", where, required=True)),
        intermediate_size=int(hf_value(hf, "intermediate_size", where, 4 * hidden)),
        padded_vocab_size=int(hf_value(hf, "vocab_size", where, required=True)),
        block_size=int(hf_value(hf, "max_position_embeddings", where, 2048)),
        rotary_percentage=fraction, rope_base=base,
        parallel_residual=bool(hf_value(hf, "use_parallel_residual", where, True)),
        bias=True, lm_head_bias=False, norm_class="LayerNorm",
        norm_eps=float(hf_value(hf, "layer_norm_eps", where, 1e-5)),
        mlp_class="GptNeoxMLP", gelu_approximate=_GELU[act],
        tie_embeddings=bool(hf_value(hf, "tie_word_embeddings", where, False)),
        bos_token_id=first_id(hf.get("bos_token_id")), eos_token_id=first_id(hf.get("eos_token_id")),
        add_bos_token=False)


def check_expressible(config: Config, where: str) -> None:
    """Refuse configs that GPTNeoXForCausalLM cannot represent, before writing anything."""
    problems = []
    if config.norm_class != "LayerNorm":
        problems.append(f"norm_class {config.norm_class!r} (needs LayerNorm)")
    if config.mlp_class != "GptNeoxMLP":
        problems.append(f"mlp_class {config.mlp_class!r} (needs GptNeoxMLP)")
    if not config.bias:
        problems.append("bias=False (GPT-NeoX has biases on every linear layer)")
    if config.lm_head_bias:
        problems.append("lm_head_bias=True")
    if config.n_query_groups != config.n_head:
        problems.append(f"n_query_groups={config.n_query_groups} (GPT-NeoX has no grouped-query attention)")
    if config.head_size * config.n_head != config.n_embd:
        problems.append(f"head_size {config.head_size} x n_head {config.n_head} != n_embd {config.n_embd}")
    if problems:
        raise CheckpointError(f"cannot express as {ARCHITECTURE}: {'; '.join(problems)}", where=where)


def config_to_hf(config: Config, state: dict[str, torch.Tensor]) -> dict:
    # Top-level rotary_pct / rotary_emb_base, as the released Pythia files have them: transformers 4
    # reads only these and transformers 5 still accepts them.
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "vocab_size": config.padded_vocab_size, "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.block_size,
        "rotary_pct": config.rotary_percentage, "rotary_emb_base": config.rope_base,
        "use_parallel_residual": config.parallel_residual, "layer_norm_eps": config.norm_eps,
        "hidden_act": "gelu" if config.gelu_approximate == "none" else "gelu_pytorch_tanh",
        "attention_bias": True, "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "torch_dtype": torch_dtype_name(state),
    }


def hf_names(key: str, config: Config) -> list[str]:
    return [rename(key, _TOP, _LAYER, _PREFIX)]


def ignorable_hf(config: Config) -> tuple[str, ...]:
    return ("embed_out.weight", "lm_head.weight") if config.tie_embeddings else ()


def from_hf(key: str, tensors: list[torch.Tensor], config: Config) -> torch.Tensor:
    (tensor,) = tensors
    if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
        rest = tensor.shape[1:]
        tensor = tensor.reshape(config.n_head, 3, config.head_size, *rest).transpose(0, 1)
        tensor = tensor.reshape(3 * config.n_head * config.head_size, *rest)
    return tensor


def to_hf(key: str, tensor: torch.Tensor, config: Config) -> list[torch.Tensor]:
    if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
        rest = tensor.shape[1:]
        tensor = tensor.reshape(3, config.n_head, config.head_size, *rest).transpose(0, 1)
        tensor = tensor.reshape(3 * config.n_head * config.head_size, *rest)
    return [tensor]
