"""openseason checkpoint -> Hugging Face model directory (`openseason convert to-hf`).

The result loads with `transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` (and the tokenizer
with AutoTokenizer when the checkpoint has tokenizer.json). Weights are written as safetensors.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..checkpoint import (DEFAULT_SHARD_BYTES, build_model, check_state_against_model, is_peft_checkpoint,
                          load_config, load_state, model_state_for_saving, root_base, save_weights)
from ..errors import CheckpointError
from ..fileio import replace_dir, staging_dir
from ..tokenizer import copy_tokenizer_files
from .families import family_for_config
from .from_hf import parse_dtype
from .keymap import refuse_overwrite, state_to_hf
from .peft_out import load_folded, tokenizer_dir


def convert_to_hf(ckpt_dir: str | Path, hf_dir: str | Path, *, dtype=None,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write our checkpoint `ckpt_dir` as a Hugging Face model directory `hf_dir` (atomically).

    GPT-NeoX-family checkpoints become GPTNeoXForCausalLM, LLaMA-family ones LlamaForCausalLM, MPT ones
    MptForCausalLM; a
    config that the target class cannot represent is refused before anything is written. `dtype`
    casts the weights (default: as stored). A LoRA checkpoint is folded into its base's weights on
    the way out (`openseason export-peft` writes it as a PEFT adapter folder instead); LLaMA-Adapter
    checkpoints cannot be expressed as plain weights and are refused. Returns `hf_dir`.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(ckpt_dir))
    refuse_overwrite(ckpt_dir, Path(hf_dir))
    dtype = parse_dtype(dtype)
    config = load_config(ckpt_dir)  # a PEFT checkpoint keeps its base's config.json too
    where = str(ckpt_dir / "config.json")
    family = family_for_config(config.family, where)
    family.check_expressible(config, where)
    if is_peft_checkpoint(ckpt_dir):
        refuse_overwrite(root_base(ckpt_dir), Path(hf_dir))
        state = model_state_for_saving(load_folded(ckpt_dir, "Hugging Face format"))
    else:
        state = load_state(ckpt_dir)
        check_state_against_model(state, build_model(config), where=str(ckpt_dir))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    hf_state = state_to_hf(family, config, state)
    hf_config = family.config_to_hf(config, hf_state)

    final = Path(hf_dir)
    tmp = staging_dir(final)
    try:
        save_weights(hf_state, tmp, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        copied = copy_tokenizer_files(tokenizer_dir(ckpt_dir), tmp)
        if "generation_config.json" not in copied:
            generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                          "_from_model_config": True}
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
