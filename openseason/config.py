"""Model configuration: one dataclass, and named configs as plain data.

The one decoder in `model.py` covers GPT-NeoX/Pythia, the LLaMA family and MPT through the flags below
(MPT: `alibi=True` with no rotary dimensions, `clip_qkv`, `norm_bias=False`, `bias=False`).
Named configs are dicts that override the defaults; each names the Hugging Face config.json it was
read from, so any number here can be checked against its source.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass
class Config:
    name: str = "custom"
    family: str = "gpt_neox"            # "gpt_neox" | "llama" | "mpt": picks conversion key maps and BOS/EOS policy
    hf_id: str | None = None            # the Hugging Face repository the numbers come from
    block_size: int = 2048              # maximum context length (max_position_embeddings)
    vocab_size: int = 50254             # tokenizer vocabulary
    padded_vocab_size: int | None = None  # rows of the embedding matrix (Pythia pads to a multiple of 128)
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 512
    n_query_groups: int | None = None   # key/value heads; None = n_head (multi-head), 1 = multi-query
    head_size: int | None = None        # None = n_embd // n_head
    intermediate_size: int | None = None  # None = 4 * n_embd
    rotary_percentage: float = 1.0      # fraction of each head's dims that get rotary embeddings
    rope_base: float = 10000.0
    parallel_residual: bool = False     # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    bias: bool = False                  # biases on every linear layer except lm_head
    lm_head_bias: bool = False
    norm_class: str = "RMSNorm"         # "LayerNorm" | "RMSNorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True              # LayerNorm with a bias (MPT's LayerNorms have none)
    mlp_class: str = "LLaMAMLP"         # "GptNeoxMLP" (fc -> GELU -> proj) | "LLaMAMLP" (SwiGLU)
    gelu_approximate: str = "none"      # "none" is the exact erf GELU Pythia uses
    tie_embeddings: bool = False
    alibi: bool = False                 # ALiBi: per-head linear biases on attention scores (needs rotary_percentage=0)
    alibi_bias_max: float = 8.0         # MPT's slopes are 2^-(alibi_bias_max * h / n) for h = 1..n
    clip_qkv: float | None = None       # clamp the fused q/k/v projection to [-clip_qkv, clip_qkv] (MPT)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    add_bos_token: bool = False         # does the family's tokenizer prepend BOS (LLaMA yes, Pythia no)
    extra: dict = field(default_factory=dict)  # free-form provenance, never read by the model

    def __post_init__(self) -> None:
        if self.padded_vocab_size is None:
            self.padded_vocab_size = self.vocab_size
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}",
                                  where=f"config {self.name!r}")
            self.head_size = self.n_embd // self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        self.validate()

    # -- derived ---------------------------------------------------------------------------------
    @property
    def rope_n_elem(self) -> int:
        """Dimensions per head that are rotated (GPT-NeoX's rotary_ndims)."""
        return int(self.rotary_percentage * self.head_size)

    def validate(self) -> None:
        here = f"config {self.name!r}"
        if self.family not in ("gpt_neox", "llama", "mpt"):
            raise ConfigError(f"unknown family {self.family!r}; expected 'gpt_neox', 'llama' or 'mpt'", where=here)
        if self.norm_class not in ("LayerNorm", "RMSNorm"):
            raise ConfigError(f"unknown norm_class {self.norm_class!r}", where=here)
        if self.mlp_class not in ("GptNeoxMLP", "LLaMAMLP"):
            raise ConfigError(f"unknown mlp_class {self.mlp_class!r}", where=here)
        if self.n_head % self.n_query_groups:
            raise ConfigError(f"n_head={self.n_head} is not a multiple of n_query_groups={self.n_query_groups}",
                              where=here)
        if not 0.0 <= self.rotary_percentage <= 1.0:
            raise ConfigError(f"rotary_percentage={self.rotary_percentage} must be in [0, 1]", where=here)
        if self.rope_n_elem % 2:
            raise ConfigError(f"rotary dimension {self.rope_n_elem} (head_size {self.head_size} x "
                              f"rotary_percentage {self.rotary_percentage}) must be even", where=here)
        if self.alibi and self.rope_n_elem:
            raise ConfigError(f"alibi=True with rotary_percentage={self.rotary_percentage}: a model has one "
                              "position scheme", where=here, hint="set rotary_percentage=0 for ALiBi")
        if not self.alibi_bias_max > 0:
            raise ConfigError(f"alibi_bias_max={self.alibi_bias_max} must be positive", where=here)
        if self.clip_qkv is not None and not self.clip_qkv > 0:
            raise ConfigError(f"clip_qkv={self.clip_qkv} must be positive (or None for no clipping)", where=here)
        if self.padded_vocab_size < self.vocab_size:
            raise ConfigError("padded_vocab_size is smaller than vocab_size", where=here)

    # -- (de)serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}", where=where,
                              hint=f"valid keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("config file not found", where=str(path)) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        if name not in NAMED_CONFIGS:
            close = [n for n in NAMED_CONFIGS if name.lower() in n.lower()]
            raise ConfigError(f"unknown model config {name!r}",
                              hint=f"did you mean one of {close[:8]}?" if close else
                              "see openseason.config.NAMED_CONFIGS for the list")
        data = {**NAMED_CONFIGS[name], **overrides}
        return cls(**data)


# ---------------------------------------------------------------------------------------------------
# Named configs. Plain dicts over the defaults; the comment names each one's source.
# ---------------------------------------------------------------------------------------------------
_PYTHIA_BASE = dict(family="gpt_neox", block_size=2048, vocab_size=50254, rotary_percentage=0.25,
                    rope_base=10000.0, parallel_residual=True, bias=True, norm_class="LayerNorm",
                    norm_eps=1e-5, mlp_class="GptNeoxMLP", tie_embeddings=False,
                    bos_token_id=0, eos_token_id=0, add_bos_token=False)

# (name, n_layer, n_embd, n_head, padded vocab) from EleutherAI/pythia-*/config.json
_PYTHIA_SIZES = [
    ("14m", 6, 128, 4, 50304),
    ("31m", 6, 256, 8, 50304),
    ("70m", 6, 512, 8, 50304),
    ("160m", 12, 768, 12, 50304),
    ("410m", 24, 1024, 16, 50304),
    ("1b", 16, 2048, 8, 50304),
    ("1.4b", 24, 2048, 16, 50304),
    ("2.8b", 32, 2560, 32, 50304),
    ("6.9b", 32, 4096, 32, 50432),
    ("12b", 36, 5120, 40, 50688),
]

NAMED_CONFIGS: dict[str, dict[str, Any]] = {}
for _size, _layers, _embd, _heads, _vocab in _PYTHIA_SIZES:
    for _suffix in ("", "-deduped"):
        _name = f"pythia-{_size}{_suffix}"
        NAMED_CONFIGS[_name] = dict(_PYTHIA_BASE, name=_name, hf_id=f"EleutherAI/{_name}", n_layer=_layers,
                                    n_embd=_embd, n_head=_heads, padded_vocab_size=_vocab,
                                    intermediate_size=4 * _embd)

_LLAMA_BASE = dict(family="llama", block_size=2048, vocab_size=32000, rotary_percentage=1.0,
                   rope_base=10000.0, parallel_residual=False, bias=False, norm_class="RMSNorm",
                   norm_eps=1e-6, mlp_class="LLaMAMLP", tie_embeddings=False,
                   bos_token_id=1, eos_token_id=2, add_bos_token=True)


def _llama(name: str, hf_id: str, n_layer: int, n_embd: int, n_head: int, intermediate: int,
           **extra: Any) -> None:
    NAMED_CONFIGS[name] = dict(_LLAMA_BASE, name=name, hf_id=hf_id, n_layer=n_layer, n_embd=n_embd,
                               n_head=n_head, intermediate_size=intermediate, **extra)


# huggyllama/llama-*/config.json (the original LLaMA release converted to HF)
_llama("llama-7b", "huggyllama/llama-7b", 32, 4096, 32, 11008)
_llama("llama-13b", "huggyllama/llama-13b", 40, 5120, 40, 13824)
_llama("llama-33b", "huggyllama/llama-30b", 60, 6656, 52, 17920)
_llama("llama-65b", "huggyllama/llama-65b", 80, 8192, 64, 22016)
# meta-llama/Llama-2-*-hf/config.json
_llama("llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 11008, block_size=4096, norm_eps=1e-5)
_llama("llama-2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 13824, block_size=4096, norm_eps=1e-5)
_llama("llama-2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 28672, block_size=4096, norm_eps=1e-5,
       n_query_groups=8)
# openlm-research/open_llama_*/config.json
_llama("open_llama-3b", "openlm-research/open_llama_3b", 26, 3200, 32, 8640)
_llama("open_llama-7b", "openlm-research/open_llama_7b", 32, 4096, 32, 11008)
_llama("open_llama-13b", "openlm-research/open_llama_13b", 40, 5120, 40, 13824)
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/config.json
_llama("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 22, 2048, 32, 5632,
       n_query_groups=4, norm_eps=1e-5)

# MPT (MosaicML): ALiBi, no positional embedding, fused Wqkv, no biases, LayerNorm without bias, tied
# embeddings, exact-GELU MLP of expansion_ratio 4, GPT-NeoX-20B tokenizer (vocab padded to 50432).
_MPT_BASE = dict(family="mpt", block_size=2048, vocab_size=50277, padded_vocab_size=50432, rotary_percentage=0.0,
                 alibi=True, alibi_bias_max=8.0, parallel_residual=False, bias=False, norm_class="LayerNorm",
                 norm_bias=False, norm_eps=1e-5, mlp_class="GptNeoxMLP", gelu_approximate="none",
                 tie_embeddings=True, bos_token_id=0, eos_token_id=0, add_bos_token=False)


def _mpt(name: str, n_layer: int, n_embd: int, n_head: int, **extra: Any) -> None:
    NAMED_CONFIGS[name] = dict(_MPT_BASE, name=name, hf_id=f"mosaicml/{name}", n_layer=n_layer, n_embd=n_embd,
                               n_head=n_head, intermediate_size=4 * n_embd, **extra)


# mosaicml/mpt-7b{,-instruct,-chat}/config.json: d_model 4096, n_heads 32, n_layers 32, max_seq_len 2048,
# vocab_size 50432, expansion_ratio 4, no_bias true, attn_config {alibi: true, alibi_bias_max: 8, clip_qkv: null}
for _name in ("mpt-7b", "mpt-7b-instruct", "mpt-7b-chat"):
    _mpt(_name, 32, 4096, 32)
# mosaicml/mpt-7b-storywriter/config.json: as mpt-7b with max_seq_len 65536, alibi_bias_max 16, clip_qkv 6
_mpt("mpt-7b-storywriter", 32, 4096, 32, block_size=65536, alibi_bias_max=16.0, clip_qkv=6.0)
# mosaicml/mpt-7b-8k{,-instruct,-chat}/config.json: as mpt-7b with max_seq_len 8192
for _name in ("mpt-7b-8k", "mpt-7b-8k-instruct", "mpt-7b-8k-chat"):
    _mpt(_name, 32, 4096, 32, block_size=8192)
# mosaicml/mpt-30b{,-instruct,-chat}/config.json: d_model 7168, n_heads 64, n_layers 48, max_seq_len 8192
for _name in ("mpt-30b", "mpt-30b-instruct", "mpt-30b-chat"):
    _mpt(_name, 48, 7168, 64, block_size=8192)

# Tiny configs for tests and the offline quickstart (not from any release).
NAMED_CONFIGS["tiny-neox"] = dict(_PYTHIA_BASE, name="tiny-neox", block_size=256, vocab_size=512,
                                  padded_vocab_size=512, n_layer=2, n_embd=64, n_head=4, intermediate_size=256)
NAMED_CONFIGS["tiny-llama"] = dict(_LLAMA_BASE, name="tiny-llama", block_size=256, vocab_size=512,
                                   n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=176,
                                   norm_eps=1e-5)
# 6 heads: not a power of two, so the interleaved slopes are exercised.
NAMED_CONFIGS["tiny-mpt"] = dict(_MPT_BASE, name="tiny-mpt", block_size=128, vocab_size=512, padded_vocab_size=512,
                                 n_layer=2, n_embd=48, n_head=6, intermediate_size=192)
NAMED_CONFIGS["tiny-mpt-clip"] = dict(NAMED_CONFIGS["tiny-mpt"], name="tiny-mpt-clip", n_head=4, clip_qkv=0.5)
