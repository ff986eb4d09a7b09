"""PEFT checkpoints: only the trainable weights, the methods with their options, and a reference to
the base checkpoint. `openseason.checkpoint.load_model` loads them transparently.

    CKPT/
      peft.json                  {"base_checkpoint": ..., "base_checkpoint_abs": ..., "methods": [...]}
      peft_weights.safetensors   the trainable tensors, keyed like model.state_dict()
      config.json, tokenizer files, run_card.json  (as in a full checkpoint)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError

PEFT_CONFIG_NAME = "peft.json"
PEFT_WEIGHTS_NAME = "peft_weights.safetensors"


def is_peft_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / PEFT_CONFIG_NAME).exists()


def read_peft_config(directory: str | Path) -> dict:
    path = Path(directory) / PEFT_CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None


def resolve_base(directory: str | Path, cfg: Optional[dict] = None) -> Path:
    """The base checkpoint: the relative reference first (a moved run tree keeps working), then absolute."""
    directory = Path(directory)
    cfg = cfg or read_peft_config(directory)
    for key in ("base_checkpoint", "base_checkpoint_abs"):
        ref = cfg.get(key)
        if ref:
            path = (directory / ref) if not os.path.isabs(ref) else Path(ref)
            if (path / "config.json").exists():
                return path.resolve()
    raise CheckpointError(f"the base checkpoint {cfg.get('base_checkpoint_abs') or cfg.get('base_checkpoint')!r} "
                          "of this PEFT checkpoint is missing", where=str(directory / PEFT_CONFIG_NAME),
                          hint="put the base checkpoint back, or edit base_checkpoint in peft.json")


def write_peft_files(tmp: Path, final: Path, model: torch.nn.Module, base_checkpoint: str | Path) -> None:
    """Write peft.json + peft_weights.safetensors into the staging dir `tmp` of checkpoint `final`."""
    from safetensors.torch import save_file

    from .base import trainable_state_dict

    base = Path(base_checkpoint).resolve()
    state = {k: v.detach().contiguous().cpu().clone() for k, v in trainable_state_dict(model).items()}
    save_file(state, str(tmp / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = {"base_checkpoint": os.path.relpath(base, Path(final).resolve()), "base_checkpoint_abs": str(base),
           "methods": getattr(model, "peft_methods", [])}
    (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def root_base(directory: str | Path) -> Path:
    """Follow PEFT references down to the full checkpoint they stand on."""
    path = Path(directory)
    while is_peft_checkpoint(path):
        path = resolve_base(path)
    return path


def load_peft_state(model: torch.nn.Module, directory: str | Path, device="cpu") -> None:
    """Load peft_weights.safetensors into an already-adapted model (strict about names and shapes)."""
    from ..checkpoint import read_safetensors

    directory = Path(directory)
    state = read_safetensors(directory / PEFT_WEIGHTS_NAME, device)
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    bad = sorted(k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape))
    if unknown or bad:
        raise CheckpointError(f"PEFT weights do not fit the adapted model (unknown {unknown[:5]}, "
                              f"wrong shape {bad[:5]})", where=str(directory / PEFT_WEIGHTS_NAME))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key, value in state.items():
            target = params.get(key)
            if target is None:
                raise CheckpointError(f"{key} is not a parameter of the adapted model", where=str(directory))
            target.copy_(value.to(target.dtype))


def load_peft_checkpoint(directory: str | Path, device="cpu", dtype: Optional[torch.dtype] = None):
    """Base model + methods re-applied + the stored trainable weights; no merge step."""
    from ..checkpoint import load_model
    from . import apply

    directory = Path(directory)
    cfg = read_peft_config(directory)
    model = load_model(resolve_base(directory, cfg), device=device, dtype=dtype)
    for entry in cfg.get("methods", []):
        apply(model, entry["method"], **entry.get("options", {}))
    load_peft_state(model, directory, device)
    return model.eval()
