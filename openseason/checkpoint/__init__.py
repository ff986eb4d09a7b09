"""The one home of checkpoints.

    full.py         full checkpoints: safetensors weights (sharded above a size), config.json,
                    tokenizer files, run_card.json
    peft.py         PEFT checkpoints: trainable weights + methods + a reference to the base (chains of
                    references are followed, cycles refused, a base with other weights refused)
    fingerprint.py  fingerprints of checkpoint weights (which base a PEFT checkpoint was trained on)
    load.py         load_model: any checkpoint directory (full or PEFT) into a GPT
    training.py     resumable training state: model, optimizer, data position, RNG, step
    distributed.py  the same through torch.distributed.checkpoint (DCP), resumable on any process count

Directories are staged and swapped in crash-safely by openseason.fileio (staging_dir, replace_dir).

    from openseason.checkpoint import load_model, save_checkpoint, read_run_card
"""
from __future__ import annotations

from .distributed import DCP_DIR, is_dcp_checkpoint, load_dcp_checkpoint, save_dcp_checkpoint
from .full import (DEFAULT_SHARD_BYTES, INDEX_NAME, RUN_CARD_NAME, WEIGHTS_NAME, build_model,
                   check_state_against_model, load_config, load_full_model, load_state, model_state_for_saving,
                   read_run_card, read_safetensors, save_checkpoint, save_weights, update_run_card, weight_files,
                   write_checkpoint_metadata)
from .load import load_model
from .peft import (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, base_chain, is_peft_checkpoint, load_peft_checkpoint,
                   load_peft_state, read_peft_config, resolve_base, root_base, verified_chain,
                   verify_base, weights_fingerprint, write_peft_files)
from .training import (OPTIMIZER_NAME, STATE_NAME, find_resume, load_train_checkpoint, rng_state,
                       save_train_checkpoint, set_rng_state, step_dir)

__all__ = [
    "DEFAULT_SHARD_BYTES", "INDEX_NAME", "RUN_CARD_NAME", "WEIGHTS_NAME", "build_model", "check_state_against_model",
    "load_config", "load_full_model", "load_model", "load_state", "model_state_for_saving", "read_run_card",
    "read_safetensors", "save_checkpoint", "save_weights", "update_run_card", "weight_files",
    "write_checkpoint_metadata",
    "PEFT_CONFIG_NAME", "PEFT_WEIGHTS_NAME", "base_chain", "is_peft_checkpoint", "load_peft_checkpoint",
    "load_peft_state", "read_peft_config", "resolve_base", "root_base", "verified_chain", "verify_base",
    "write_peft_files",
    "weights_fingerprint",
    "OPTIMIZER_NAME", "STATE_NAME", "find_resume", "load_train_checkpoint", "rng_state", "save_train_checkpoint",
    "set_rng_state", "step_dir",
    "DCP_DIR", "is_dcp_checkpoint", "load_dcp_checkpoint", "save_dcp_checkpoint",
]
