"""MPT (transformers `MptForCausalLM`, and MosaicML's own `MPTForCausalLM` layout) <-> openseason key map.

MPT's fused `Wqkv` already stores [q | k | v] as three row blocks, like ours, so every tensor maps
one to one. config.json nests the attention settings under `attn_config`.

transformers' MPT implements only a subset of what MosaicML's configs can say: ALiBi always on with
alibi_bias_max 8, expansion_ratio 4, no biases, multi-head attention. Checkpoints outside that subset
(MosaicML's own code writes them) load here when our decoder can build them: multi-/grouped-query
attention, other expansion ratios and ALiBi maxima, biases, no positions at all. Export to
MptForCausalLM refuses them, naming the field. What our decoder cannot build (learned positional
embeddings, qk_ln, prefix_lm, logit_scale, a softmax scale, rotary MPT, GLU feed-forward) is refused
on the way in.
"""
from __future__ import annotations

import math

import torch

from ..config import Config
from ..errors import CheckpointError
from .keymap import first_id, hf_value, rename, torch_dtype_name

ARCHITECTURE = "MptForCausalLM"
OTHER_ARCHITECTURES = ("MPTForCausalLM",)   # MosaicML's trust_remote_code class, same weights and config
MODEL_TYPE = "mpt"
ALIASES: dict[str, str] = {}

_TOP = {"embed.weight": "transformer.wte.weight", "norm_f.weight": "transformer.norm_f.weight",
        "norm_f.bias": "transformer.norm_f.bias", "lm_head.weight": "lm_head.weight"}
_LAYER = {"norm_1.weight": "norm_1.weight", "norm_1.bias": "norm_1.bias",
          "norm_2.weight": "norm_2.weight", "norm_2.bias": "norm_2.bias",
          "attn.qkv.weight": "attn.Wqkv.weight", "attn.qkv.bias": "attn.Wqkv.bias",
          "attn.proj.weight": "attn.out_proj.weight", "attn.proj.bias": "attn.out_proj.bias",
          "mlp.fc.weight": "ffn.up_proj.weight", "mlp.fc.bias": "ffn.up_proj.bias",
          "mlp.proj.weight": "ffn.down_proj.weight", "mlp.proj.bias": "ffn.down_proj.bias"}
_PREFIX = "transformer.blocks.{i}."
_NORMS = ("layernorm", "low_precision_layernorm")


def _refuse(field: str, value, where: str, why: str) -> CheckpointError:
    return CheckpointError(f"MPT config {field}={value!r} is not supported: {why}", where=where,
                           hint="openseason converts MPT checkpoints whose architecture its decoder can build")


def config_from_hf(hf: dict, where: str) -> dict:
    attn = hf.get("attn_config") or {}
    if not isinstance(attn, dict):
        raise CheckpointError(f"attn_config must be an object, got {type(attn).__name__}", where=where)
    ffn = hf.get("ffn_config") or {}
    hidden = int(hf_value(hf, "d_model", where, required=True))
    heads = int(hf_value(hf, "n_heads", where, required=True))
    alibi = bool(attn.get("alibi", True))

    if attn.get("qk_ln") or attn.get("qk_gn"):
        raise _refuse("attn_config.qk_ln", True, where, "no query/key LayerNorm in the openseason decoder")
    if attn.get("prefix_lm"):
        raise _refuse("attn_config.prefix_lm", True, where, "prefix-LM (bidirectional prefix) attention")
    if attn.get("rope"):
        raise _refuse("attn_config.rope", True, where, "MPT with rotary embeddings")
    if attn.get("softmax_scale") is not None and not math.isclose(float(attn["softmax_scale"]),
                                                                  1 / math.sqrt(hidden // heads)):
        raise _refuse("attn_config.softmax_scale", attn["softmax_scale"], where,
                      "only the default 1/sqrt(head_dim) scale")
    if attn.get("sliding_window_size", -1) not in (-1, None):
        raise _refuse("attn_config.sliding_window_size", attn["sliding_window_size"], where, "sliding-window attention")
    if hf.get("logit_scale") is not None:
        raise _refuse("logit_scale", hf["logit_scale"], where, "scaled output logits")
    if not alibi and hf.get("learned_pos_emb", True):
        raise _refuse("learned_pos_emb", True, where, "learned positional embeddings (wpe); only ALiBi "
                      "or no positions")
    norm = hf.get("norm_type", "low_precision_layernorm")
    if norm not in _NORMS:
        raise _refuse("norm_type", norm, where, f"only {', '.join(_NORMS)}")
    if ffn.get("ffn_type", "mptmlp") != "mptmlp":
        raise _refuse("ffn_config.ffn_type", ffn["ffn_type"], where, "only the GELU MLP (mptmlp)")
    act = (ffn.get("ffn_act_fn") or {}).get("name", "gelu")
    if act != "gelu" or (ffn.get("ffn_act_fn") or {}).get("approximate", "none") != "none":
        raise _refuse("ffn_config.ffn_act_fn", ffn.get("ffn_act_fn"), where, "only exact GELU")

    attn_type = attn.get("attn_type", "multihead_attention")
    if attn_type == "multihead_attention":
        groups = heads
    elif attn_type == "multiquery_attention":
        groups = 1
    elif attn_type == "grouped_query_attention":
        groups = int(attn.get("kv_n_heads") or heads)
    else:
        raise _refuse("attn_config.attn_type", attn_type, where, "unknown attention type")
    intermediate = ffn.get("ffn_hidden_size") or int(float(hf_value(hf, "expansion_ratio", where, 4)) * hidden)
    no_bias = bool(hf_value(hf, "no_bias", where, True))
    clip = attn.get("clip_qkv")
    return dict(
        family="mpt", n_embd=hidden, n_head=heads, n_query_groups=groups,
        n_layer=int(hf_value(hf, "n_layers", where, required=True)),
        intermediate_size=int(intermediate),
        padded_vocab_size=int(hf_value(hf, "vocab_size", where, required=True)),
        block_size=int(hf_value(hf, "max_seq_len", where, 2048)),
        rotary_percentage=0.0, alibi=alibi, alibi_bias_max=float(attn.get("alibi_bias_max", 8)),
        clip_qkv=None if clip is None else float(clip),
        parallel_residual=False, bias=not no_bias, lm_head_bias=False, norm_class="LayerNorm",
        norm_bias=not no_bias, norm_eps=float(hf_value(hf, "layer_norm_epsilon", where, 1e-5)),
        mlp_class="GptNeoxMLP", gelu_approximate="none",
        tie_embeddings=bool(hf_value(hf, "tie_word_embeddings", where, True)),
        bos_token_id=first_id(hf.get("bos_token_id")), eos_token_id=first_id(hf.get("eos_token_id")),
        add_bos_token=False)


def check_expressible(config: Config, where: str) -> None:
    """Refuse what transformers' MptForCausalLM cannot represent, naming the field, before writing anything."""
    problems = []
    if not config.alibi:
        problems.append("alibi=False (transformers' MPT always applies ALiBi)")
    if config.alibi_bias_max != 8:
        problems.append(f"alibi_bias_max={config.alibi_bias_max} (transformers' MPT always uses 8)")
    if config.intermediate_size != 4 * config.n_embd:
        problems.append(f"intermediate_size={config.intermediate_size}, i.e. expansion_ratio "
                        f"{config.intermediate_size / config.n_embd:g} (transformers' MPT hard-codes 4)")
    if config.bias or config.norm_bias:
        problems.append(f"bias={config.bias}, norm_bias={config.norm_bias} (transformers' MPT has no biases)")
    if config.lm_head_bias:
        problems.append("lm_head_bias=True")
    if config.norm_class != "LayerNorm":
        problems.append(f"norm_class {config.norm_class!r} (needs LayerNorm)")
    if config.mlp_class != "GptNeoxMLP" or config.gelu_approximate != "none":
        problems.append(f"mlp_class {config.mlp_class!r} / gelu_approximate {config.gelu_approximate!r} "
                        "(needs GptNeoxMLP with exact GELU)")
    if config.parallel_residual:
        problems.append("parallel_residual=True")
    if config.rope_n_elem:
        problems.append(f"rotary_percentage={config.rotary_percentage}")
    if config.n_query_groups != config.n_head:
        problems.append(f"n_query_groups={config.n_query_groups} (transformers' MPT is multi-head only)")
    if config.head_size * config.n_head != config.n_embd:
        problems.append(f"head_size {config.head_size} x n_head {config.n_head} != n_embd {config.n_embd}")
    if problems:
        raise CheckpointError(f"cannot express as {ARCHITECTURE}: {'; '.join(problems)}", where=where,
                              hint="keep the checkpoint in openseason format; transformers cannot load it as MPT")


def config_to_hf(config: Config, state: dict[str, torch.Tensor]) -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
        "d_model": config.n_embd, "n_heads": config.n_head, "n_layers": config.n_layer, "expansion_ratio": 4,
        "max_seq_len": config.block_size, "vocab_size": config.padded_vocab_size,
        "layer_norm_epsilon": config.norm_eps, "learned_pos_emb": False, "no_bias": True, "logit_scale": None,
        "norm_type": "low_precision_layernorm", "emb_pdrop": 0, "resid_pdrop": 0, "embedding_fraction": 1.0,
        "attn_config": {"attn_type": "multihead_attention", "attn_pdrop": 0, "attn_impl": "torch",
                        "clip_qkv": config.clip_qkv, "softmax_scale": None, "prefix_lm": False, "qk_ln": False,
                        "attn_uses_sequence_id": False, "alibi": True, "alibi_bias_max": 8},
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "torch_dtype": torch_dtype_name(state),
    }


def hf_names(key: str, config: Config) -> list[str]:
    return [rename(key, _TOP, _LAYER, _PREFIX)]


def ignorable_hf(config: Config) -> tuple[str, ...]:
    return ("lm_head.weight",) if config.tie_embeddings else ()


def from_hf(key: str, tensors: list[torch.Tensor], config: Config) -> torch.Tensor:
    (tensor,) = tensors
    return tensor


def to_hf(key: str, tensor: torch.Tensor, config: Config) -> list[torch.Tensor]:
    return [tensor]
