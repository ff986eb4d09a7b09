"""`load_model`: any checkpoint directory (full or PEFT) into a ready GPT."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError
from ..fileio import wait_for_dir
from .full import load_full_model
from .peft import is_peft_checkpoint, load_peft_checkpoint


def load_model(directory: str | Path, device="cpu", dtype: Optional[torch.dtype] = None):
    """Load a checkpoint directory into a GPT on `device` (weights cast to `dtype` if given).

    A PEFT checkpoint (peft.json) loads its base, re-applies the methods and loads the trainable
    weights, so adapters are used directly without a merge step."""
    directory = Path(directory)
    if not wait_for_dir(directory) or not directory.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(directory))
    if is_peft_checkpoint(directory):
        return load_peft_checkpoint(directory, device=device, dtype=dtype)
    return load_full_model(directory, device=device, dtype=dtype)
