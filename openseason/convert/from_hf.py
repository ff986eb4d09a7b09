"""Hugging Face model directory -> openseason checkpoint (`openseason convert from-hf`)."""
from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch

from ..checkpoint import DEFAULT_SHARD_BYTES, build_model, save_checkpoint
from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..tokenizer import Tokenizer
from .families import family_for_hf_config
from .hf_files import load_hf_state, read_hf_config
from .keymap import refuse_overwrite, state_from_hf

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> Optional[torch.dtype]:
    """None, a torch.dtype, or one of the names in DTYPES."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[str(dtype)]


def _tokenizer_settings(hf_dir: Path, settings: dict) -> dict:
    """vocab_size, BOS/EOS ids and the add-BOS policy, preferring what the tokenizer files say.

    config.json's vocab_size is the number of embedding rows (Pythia pads 50277 tokens to 50304), so it
    becomes padded_vocab_size and the tokenizer decides vocab_size.
    """
    padded = settings["padded_vocab_size"]
    out = {"vocab_size": padded}
    if not (hf_dir / "tokenizer.json").exists():
        return out
    tok = Tokenizer.from_dir(hf_dir, config=SimpleNamespace(
        bos_token_id=settings["bos_token_id"], eos_token_id=settings["eos_token_id"],
        add_bos_token=settings["add_bos_token"]))
    out["vocab_size"] = min(tok.vocab_size, padded)
    out["bos_token_id"], out["eos_token_id"] = tok.bos_id, tok.eos_id
    if (hf_dir / "tokenizer_config.json").exists():
        out["add_bos_token"] = tok.add_bos
    return out


# Tokenizer files other libraries read but `tokenizers` (and so openseason) does not.
_SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "spiece.model", "vocab.txt")


def tokenizer_warning(hf_dir: Path, out_dir: Path) -> Optional[str]:
    """What is wrong with the tokenizer of a Hugging Face directory (None when tokenizer.json is there)."""
    if (hf_dir / "tokenizer.json").exists():
        return None
    others = [name for name in _SLOW_TOKENIZER_FILES if (hf_dir / name).exists()]
    found = (f"it has {', '.join(others)}, which openseason does not read" if others
             else "it has no tokenizer files at all")
    return (f"{hf_dir} has no tokenizer.json ({found}): the checkpoint {out_dir} was written without a tokenizer, "
            "so generate, chat, finetune and evaluate will refuse it until tokenizer.json is copied in. "
            "transformers writes one: AutoTokenizer.from_pretrained(HF_DIR).save_pretrained(HF_DIR)")


def config_from_hf_dir(hf_dir: str | Path, name: Optional[str] = None, hf_id: Optional[str] = None) -> Config:
    """Our Config for a Hugging Face directory (config.json plus tokenizer files), without reading weights."""
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    where = str(hf_dir / "config.json")
    family = family_for_hf_config(hf, where)
    settings = family.config_from_hf(hf, where)
    settings.update(_tokenizer_settings(hf_dir, settings))
    try:
        return Config(name=name or hf_dir.resolve().name, hf_id=hf_id, **settings,
                      extra={"converted_from": family.ARCHITECTURE})
    except ConfigError as exc:
        raise CheckpointError(f"config.json describes a model openseason cannot build: {exc}", where=where) from None


def convert_from_hf(hf_dir: str | Path, out_dir: str | Path, *, dtype=None, name: Optional[str] = None,
                    repo_id: Optional[str] = None, revision: Optional[str] = None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Convert a Hugging Face GPTNeoXForCausalLM, LlamaForCausalLM or MptForCausalLM directory into our checkpoint.

    Reads config.json and the weights (model.safetensors, a sharded safetensors index, or
    pytorch_model*.bin read with weights_only=True), drops stale buffers, checks every name and
    shape, and writes `out_dir` atomically (config.json, safetensors, tokenizer files, run_card.json
    recording the source). A directory without tokenizer.json is converted with a UserWarning that
    is also recorded in run_card.json ("warnings").
    `dtype` ("float32", "bfloat16", "float16") casts the weights; by default
    they keep the source dtype. Returns `out_dir`.
    """
    hf_dir = Path(hf_dir)
    refuse_overwrite(hf_dir, Path(out_dir))
    dtype = parse_dtype(dtype)
    hf = read_hf_config(hf_dir)
    family = family_for_hf_config(hf, str(hf_dir / "config.json"))
    config = config_from_hf_dir(hf_dir, name=name or (repo_id.split("/")[-1] if repo_id else None), hf_id=repo_id)
    hf_state, origin, listing = load_hf_state(hf_dir)
    state = state_from_hf(family, config, hf_state, origin, listing)
    del hf_state
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    model = build_model(config)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    problem = tokenizer_warning(hf_dir, Path(out_dir))
    if problem:  # said now, at conversion, not at the first generate
        warnings.warn(problem, stacklevel=2)
    card = {
        "warnings": [problem] if problem else [],
        "source": {"format": "huggingface", "architecture": family.ARCHITECTURE, "path": str(hf_dir.resolve()),
                   "repo_id": repo_id, "revision": revision,
                   "transformers_version": hf.get("transformers_version")},
        "hf_config": hf,
        "converted_by": "openseason convert from-hf",
        "dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
    }
    return save_checkpoint(out_dir, model, tokenizer_dir=hf_dir, run_card=card, max_shard_bytes=max_shard_bytes)
