"""openseason checkpoint -> one GGUF file that llama.cpp (and so Ollama, LM Studio, ...) loads
(`openseason convert to-gguf CKPT OUT.gguf --type f32|f16|q8_0`).

The file is written with the `gguf` package from llama.cpp's repository (GGUFWriter, its key and
tensor-name constants, `gguf.quants.quantize` for Q8_0); what goes into it follows llama.cpp's own
converter (convert_hf_to_gguf.py) for the two families:

    GPT-NeoX  arch "gptneox": the fused qkv is written as one tensor `blk.N.attn_qkv`. llama.cpp
              wants it as three contiguous row blocks [q | k | v], which is our layout already
              (its converter undoes the Hugging Face per-head interleave to get there).
    LLaMA     arch "llama": q, k and v are split, and the q and k rows are permuted per head from
              the Hugging Face rotate-half pairing (dims i and i + hs/2 rotate together) to the
              interleaved pairing llama.cpp's rope uses for this arch (dims 2i and 2i+1).
    MPT       arch "mpt": fused [q | k | v] as for GPT-NeoX, LayerNorms without bias, ALiBi from the
              `max_alibi_bias` key (ggml's slopes equal MPT's, also for head counts that are not a
              power of two), `clamp_kqv` for clip_qkv. MPT ties its output to the embedding; the
              matrix is written under both names, as for a tied GPT-NeoX.

Precision (`type`): "f32" writes every tensor as F32; "f16" writes 2-D weights as F16 and keeps
norms and biases F32 (as llama.cpp's converter does); "q8_0" writes 2-D weights as Q8_0 (blocks of
32 int8 values with one f16 scale) and falls back to F16 for a matrix whose rows are not a multiple
of 32 (reported in the result, never silent).

Tokenizer (from the checkpoint's tokenizer.json; a GGUF without one cannot run):
    byte-level BPE (ByteLevel pre-tokenizer, GPT-2 / GPT-NeoX style)  -> tokenizer.ggml.model "gpt2",
        tokens, token types, merges, pre-tokenizer "gpt-2" (llama.cpp's GPT-2 split regex, which
        is the ByteLevel one)
    sentencepiece-like BPE (Metaspace or "▁" normalizer, LLaMA style) -> "llama", tokens, scores,
        token types. tokenizer.json has no sentencepiece scores; llama.cpp's tokenizer merges the
        adjacent pair whose result has the highest score, so each token gets -(rank of the merge
        that makes it), which reproduces BPE's merge order.
A vocabulary shorter than the embedding (Pythia pads to a multiple of 128) is padded with
"[PAD{i}]" tokens of type USER_DEFINED, as llama.cpp's converter does.

A PEFT checkpoint is loaded and its LoRA folded into the weights in memory (the same merge as
`openseason merge`); LLaMA-Adapter checkpoints cannot be folded and are refused.

Known numerical difference: llama.cpp computes GELU with the tanh approximation, while Pythia uses
the exact erf GELU, so GPT-NeoX logits differ slightly more than LLaMA's (see tests).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import CheckpointError
from .peft_out import load_folded, tokenizer_dir

GGUF_TYPES = ("f32", "f16", "q8_0")

# our family -> llama.cpp architecture name (gguf.MODEL_ARCH_NAMES values)
_ARCH = {"gpt_neox": "gptneox", "llama": "llama", "mpt": "mpt"}


@dataclass
class GGUFExport:
    """What `convert_to_gguf` wrote: the file, its type, and each tensor's GGML type."""
    path: Path
    type: str
    tensor_types: dict[str, str] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)   # tensors that stayed F16 under q8_0
    n_tokens: int = 0
    tokenizer_model: str = ""

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        text = (f"{len(self.tensor_types)} tensors ({', '.join(f'{n} {t}' for t, n in sorted(counts.items()))}), "
                f"{self.n_tokens} tokens ({self.tokenizer_model})")
        if self.fallbacks:
            text += f"; kept as F16 (rows not a multiple of 32): {', '.join(self.fallbacks)}"
        return text


# -- weights ------------------------------------------------------------------------------------------
def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q or k projection (weight or bias), per head, from rotate-half order to llama.cpp's
    interleaved rotary order: row (h, half, i) moves to (h, i, half)."""
    return (weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _name(tensor: str, bid: int | None = None) -> str:
    import gguf

    return gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, tensor)].format(bid=bid)


_NEOX_LAYER = {"norm_1": "ATTN_NORM", "norm_2": "FFN_NORM", "attn.qkv": "ATTN_QKV", "attn.proj": "ATTN_OUT",
               "mlp.fc": "FFN_UP", "mlp.proj": "FFN_DOWN"}
_LLAMA_LAYER = {"norm_1": "ATTN_NORM", "norm_2": "FFN_NORM", "attn.proj": "ATTN_OUT", "mlp.fc_1": "FFN_GATE",
                "mlp.fc_2": "FFN_UP", "mlp.proj": "FFN_DOWN"}
_TOP = {"embed": "TOKEN_EMBD", "norm_f": "OUTPUT_NORM", "lm_head": "OUTPUT"}


def gguf_tensors(config: Config, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array in llama.cpp's layout, for every weight of the model."""
    out: dict[str, np.ndarray] = {}
    per_layer = _LLAMA_LAYER if config.family == "llama" else _NEOX_LAYER   # MPT names its layers as NeoX
    for key, tensor in state.items():
        array = tensor.detach().to(torch.float32).cpu().numpy()
        module, kind = key.rsplit(".", 1)
        if module in _TOP:
            if module == "lm_head" and config.tie_embeddings and config.family == "llama":
                continue  # llama.cpp uses token_embd when `output` is absent
            out[f"{_name(_TOP[module])}.{kind}"] = array
            continue
        _, index, sub = module.split(".", 2)
        bid = int(index)
        if config.family == "llama" and sub == "attn.qkv":
            q_rows, kv_rows = config.n_head * config.head_size, config.n_query_groups * config.head_size
            q, k, v = np.split(array, [q_rows, q_rows + kv_rows], axis=0)
            out[f"{_name('ATTN_Q', bid)}.{kind}"] = permute_rotary(q, config.n_head)
            out[f"{_name('ATTN_K', bid)}.{kind}"] = permute_rotary(k, config.n_query_groups)
            out[f"{_name('ATTN_V', bid)}.{kind}"] = v
            continue
        if sub not in per_layer:
            raise CheckpointError(f"no GGUF tensor for weight {key!r}", hint="this model variant cannot be exported")
        out[f"{_name(per_layer[sub], bid)}.{kind}"] = array
    if config.family in ("gpt_neox", "mpt") and config.tie_embeddings:
        # llama.cpp's gptneox and mpt graphs want an `output` tensor; write the tied matrix under both names.
        out[f"{_name('OUTPUT')}.weight"] = state["embed.weight"].detach().to(torch.float32).cpu().numpy()
    return out


def _check_exportable(config: Config, where: str) -> None:
    from .families import family_for_config

    if config.family not in _ARCH:
        raise CheckpointError(f"no GGUF export for family {config.family!r}", where=where,
                              hint=f"supported families: {', '.join(_ARCH)}")
    family_for_config(config.family, where).check_expressible(config, where)
    if config.family == "llama" and config.rope_n_elem != config.head_size:
        raise CheckpointError("LLaMA with partial rotary embeddings cannot be exported", where=where)


# -- tokenizer ----------------------------------------------------------------------------------------
@dataclass
class _Vocab:
    model: str                  # "gpt2" | "llama"
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None
    pre: str | None
    add_space_prefix: bool | None
    unk_id: int | None


def _is_byte_level(part) -> bool:
    if not isinstance(part, dict):
        return False
    if part.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(p) for p in part.get("pretokenizers", []) + part.get("decoders", []))


def _metaspace(part) -> dict | None:
    if not isinstance(part, dict):
        return None
    if part.get("type") == "Metaspace":
        return part
    for p in part.get("pretokenizers", []) + part.get("decoders", []):
        found = _metaspace(p)
        if found:
            return found
    return None


def _prepends_space(normalizer) -> bool | None:
    """LLaMA-2 style tokenizer.json: normalizer Sequence[Prepend("▁"), Replace(" ", "▁")]."""
    if not isinstance(normalizer, dict):
        return None
    parts = normalizer.get("normalizers", [normalizer])
    replaces = any(p.get("type") == "Replace" and p.get("content") == "▁" for p in parts)
    prepends = any(p.get("type") == "Prepend" and p.get("prepend") == "▁" for p in parts)
    return prepends if replaces else None


def _pre_name(pre) -> str:
    """llama.cpp's name for the pre-tokenizer: only the plain ByteLevel split is recognized here."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    raise CheckpointError(
        f"pre-tokenizer {json.dumps(pre)[:200]} has no known llama.cpp name",
        hint="only the plain ByteLevel pre-tokenizer (GPT-2 / GPT-NeoX / Pythia) maps to a llama.cpp "
             "pre-tokenizer here; other splits need llama.cpp's convert_hf_to_gguf.py")


def read_vocab(directory: Path, n_vocab: int, tokenizer) -> _Vocab:
    """The GGUF vocabulary of the checkpoint's tokenizer.json, padded to `n_vocab` entries."""
    import gguf

    file = directory / "tokenizer.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"tokenizer model {model.get('type')!r} is not supported for GGUF export",
                              where=str(file), hint="byte-level BPE and sentencepiece-style BPE are supported")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    if len(vocab) > n_vocab:
        raise CheckpointError(f"the tokenizer has {len(vocab)} tokens but the model only {n_vocab} embeddings",
                              where=str(file))
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}

    meta = _metaspace(data.get("pre_tokenizer")) or _metaspace(data.get("decoder"))
    prepend = _prepends_space(data.get("normalizer"))
    if _is_byte_level(data.get("pre_tokenizer")) or _is_byte_level(data.get("decoder")):
        kind, pre, space = "gpt2", _pre_name(data.get("pre_tokenizer")), None
    elif meta is not None or prepend is not None:
        kind, pre = "llama", None
        space = prepend if prepend is not None else meta.get("prepend_scheme", "always") != "never"
    else:
        raise CheckpointError("tokenizer.json is neither byte-level BPE nor sentencepiece-style BPE",
                              where=str(file), hint="GGUF export supports GPT-NeoX / GPT-2 and LLaMA tokenizers")

    unk_text = model.get("unk_token")
    unk_id = vocab.get(unk_text) if unk_text else None
    rank = {}
    if kind == "llama":
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", ""), r)
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.USER_DEFINED)
            scores.append(-1e9)
            continue
        tokens.append(text)
        if kind == "llama" and i == unk_id:   # as sentencepiece marks it, special or not
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special", False) else gguf.TokenType.USER_DEFINED)
        elif kind == "llama" and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(rank[text] + 1) if text in rank else 0.0)
    return _Vocab(kind, tokens, [int(t) for t in types], merges if kind == "gpt2" else [],
                  scores if kind == "llama" else None, pre, space, unk_id)


def _chat_template(directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str):
                return template
    return None


# -- the file -----------------------------------------------------------------------------------------
def convert_to_gguf(ckpt_dir: str | Path, out_file: str | Path, *, type: str = "f16",
                    name: str | None = None) -> GGUFExport:
    """Write checkpoint `ckpt_dir` (full, or LoRA folded in memory) as one GGUF file `out_file`
    (atomically: a temporary file next to it, renamed when complete). `type`: "f32", "f16" or "q8_0".
    Returns what was written (tensor types, Q8_0 fallbacks)."""
    import gguf
    from gguf.quants import quantize

    from ..tokenizer import Tokenizer

    if type not in GGUF_TYPES:
        raise CheckpointError(f"unknown GGUF type {type!r}", hint=f"choose one of {', '.join(GGUF_TYPES)}")
    ckpt_dir, out_file = Path(ckpt_dir), Path(out_file)
    if not ckpt_dir.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(ckpt_dir))
    if out_file.is_dir():
        raise CheckpointError("the output is a directory; give a file name such as model.gguf", where=str(out_file))
    model = load_folded(ckpt_dir, "GGUF")
    config = model.config
    where = str(ckpt_dir / "config.json")
    _check_exportable(config, where)
    tok_dir = tokenizer_dir(ckpt_dir)  # a PEFT checkpoint's may live with its base
    if not (tok_dir / "tokenizer.json").is_file():
        raise CheckpointError("no tokenizer.json: a GGUF file must carry the vocabulary", where=str(ckpt_dir),
                              hint="copy the model's tokenizer.json into the checkpoint directory")
    tokenizer = Tokenizer.from_dir(tok_dir, config)
    vocab = read_vocab(tok_dir, config.padded_vocab_size, tokenizer)
    state = {k: v for k, v in model.state_dict().items()
             if not (config.tie_embeddings and k == "lm_head.weight")}
    tensors = gguf_tensors(config, state)

    arch = _ARCH[config.family]
    result = GGUFExport(out_file, type, n_tokens=len(vocab.tokens), tokenizer_model=vocab.model)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".tmp", dir=out_file.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or config.name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.n_head)
        if config.rope_n_elem:
            writer.add_rope_dimension_count(config.rope_n_elem)
            writer.add_rope_freq_base(config.rope_base)
        if config.family == "gpt_neox":
            writer.add_parallel_residual(config.parallel_residual)
            writer.add_layer_norm_eps(config.norm_eps)
        elif config.family == "mpt":
            writer.add_head_count_kv(config.n_query_groups)
            writer.add_layer_norm_eps(config.norm_eps)
            writer.add_max_alibi_bias(config.alibi_bias_max if config.alibi else 0.0)
            if config.clip_qkv is not None:
                writer.add_clamp_kqv(config.clip_qkv)
        else:
            writer.add_head_count_kv(config.n_query_groups)
            writer.add_layer_norm_rms_eps(config.norm_eps)
            writer.add_vocab_size(config.padded_vocab_size)
            if config.head_size != config.n_embd // config.n_head:
                writer.add_key_length(config.head_size)
                writer.add_value_length(config.head_size)

        writer.add_tokenizer_model(vocab.model)
        if vocab.pre:
            writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        if vocab.scores is not None:
            writer.add_token_scores(vocab.scores)
        if vocab.merges:
            writer.add_token_merges(vocab.merges)
        if vocab.add_space_prefix is not None:
            writer.add_add_space_prefix(vocab.add_space_prefix)
        for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_id),
                                 (writer.add_eos_token_id, tokenizer.eos_id),
                                 (writer.add_pad_token_id, tokenizer.pad_id),
                                 (writer.add_unk_token_id, vocab.unk_id)):
            if token_id is not None:
                setter(int(token_id))
        writer.add_add_bos_token(bool(tokenizer.add_bos))
        writer.add_add_eos_token(False)
        template = _chat_template(tok_dir)
        if template:
            writer.add_chat_template(template)

        for tensor_name, array in tensors.items():
            if array.ndim == 1 or type == "f32":
                data, qtype, label = array.astype(np.float32), gguf.GGMLQuantizationType.F32, "F32"
            elif type == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
                data, qtype, label = quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0, "Q8_0"
            else:
                if type == "q8_0":
                    result.fallbacks.append(tensor_name)
                data, qtype, label = array.astype(np.float16), gguf.GGMLQuantizationType.F16, "F16"
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
            result.tensor_types[tensor_name] = label

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out_file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return result
