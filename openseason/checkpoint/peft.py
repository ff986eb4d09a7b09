"""PEFT checkpoints: only the trainable weights, the methods with their options, and a reference to
the base checkpoint they stand on. `checkpoint.load_model` loads them transparently.

    CKPT/
      peft.json                  {"base_checkpoint": ..., "base_checkpoint_abs": ..., "base_fingerprint": ...,
                                  "methods": [...]}
      peft_weights.safetensors   the trainable tensors, keyed like model.state_dict()
      config.json, tokenizer files, run_card.json  (as in a full checkpoint)

The base may itself be a PEFT checkpoint (finetuning an adapter further); `base_chain` follows the
references down to the full checkpoint and refuses a chain that comes back to itself.

`base_fingerprint` (checkpoint/fingerprint.py) is the fingerprint of the base's weights when the
adapter was written; loading compares it with the base found now and refuses another base, even one
of the same shape (`verify_base`). PEFT checkpoints written before fingerprints load as before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError
from ..fileio import wait_for_dir
from .fingerprint import FORMAT, file_sha256, full_fingerprint
from .full import load_full_model, read_safetensors

PEFT_CONFIG_NAME = "peft.json"
PEFT_WEIGHTS_NAME = "peft_weights.safetensors"


def is_peft_checkpoint(directory: str | Path) -> bool:
    wait_for_dir(directory)
    return (Path(directory) / PEFT_CONFIG_NAME).exists()


def read_peft_config(directory: str | Path) -> dict:
    path = Path(directory) / PEFT_CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no {PEFT_CONFIG_NAME}: not a PEFT checkpoint", where=str(directory)) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError("peft.json must be a JSON object", where=str(path))
    return cfg


def resolve_base(directory: str | Path, cfg: Optional[dict] = None) -> Path:
    """The base checkpoint: the relative reference first (a moved run tree keeps working), then absolute."""
    directory = Path(directory)
    cfg = cfg or read_peft_config(directory)
    for key in ("base_checkpoint", "base_checkpoint_abs"):
        ref = cfg.get(key)
        if ref:
            path = (directory / ref) if not os.path.isabs(ref) else Path(ref)
            wait_for_dir(path)
            if (path / "config.json").exists():
                return path.resolve()
    raise CheckpointError(f"the base checkpoint {cfg.get('base_checkpoint_abs') or cfg.get('base_checkpoint')!r} "
                          "of this PEFT checkpoint is missing", where=str(directory / PEFT_CONFIG_NAME),
                          hint="put the base checkpoint back, or edit base_checkpoint in peft.json")


def base_chain(directory: str | Path) -> list[Path]:
    """[directory, its base, the base's base, ..., the full checkpoint at the bottom] (resolved).

    A PEFT checkpoint whose references lead back to one already in the chain is a CheckpointError
    naming the whole chain (it would otherwise be loaded forever)."""
    chain = [Path(directory).resolve()]
    while is_peft_checkpoint(chain[-1]):
        base = resolve_base(chain[-1])
        if base in chain:
            loop = " -> ".join(str(p) for p in chain + [base])
            raise CheckpointError(f"the base_checkpoint references form a cycle: {loop}",
                                  where=str(chain[-1] / PEFT_CONFIG_NAME),
                                  hint="point base_checkpoint in peft.json at the full checkpoint the adapter "
                                       "was trained on")
        chain.append(base)
    return chain


def root_base(directory: str | Path) -> Path:
    """Follow PEFT references down to the full checkpoint they stand on."""
    return base_chain(directory)[-1]


def write_peft_files(tmp: Path, final: Path, model: torch.nn.Module, base_checkpoint: str | Path) -> None:
    """Write peft.json + peft_weights.safetensors into the staging dir `tmp` of checkpoint `final`."""
    from safetensors.torch import save_file

    from ..peft import trainable_state_dict

    base = Path(base_checkpoint).resolve()
    if base == Path(final).resolve():
        raise CheckpointError("a PEFT checkpoint cannot be its own base", where=str(final),
                              hint="write the finetuned checkpoint to another directory than its base")
    state = {k: v.detach().contiguous().cpu().clone() for k, v in trainable_state_dict(model).items()}
    save_file(state, str(tmp / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = {"base_checkpoint": os.path.relpath(base, Path(final).resolve()), "base_checkpoint_abs": str(base),
           "base_fingerprint": weights_fingerprint(base), "methods": getattr(model, "peft_methods", [])}
    (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def weights_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a checkpoint's weights: full (fingerprint.full_fingerprint), or a PEFT level's
    whole weight file together with its base's fingerprint."""
    directory = Path(directory)
    if not is_peft_checkpoint(directory):
        return full_fingerprint(directory)
    own = file_sha256(directory / PEFT_WEIGHTS_NAME)
    return f"{FORMAT}:" + hashlib.sha256(f"{own}|{weights_fingerprint(resolve_base(directory))}".encode()).hexdigest()


def verify_base(directory: str | Path, base: Optional[str | Path] = None) -> None:
    """Refuse a base whose weights are not the ones the PEFT checkpoint `directory` was trained on."""
    directory = Path(directory)
    cfg = read_peft_config(directory)
    recorded = cfg.get("base_fingerprint")
    if not recorded:  # written before fingerprints were recorded: nothing to compare
        return
    base = Path(base) if base is not None else resolve_base(directory, cfg)
    found = weights_fingerprint(base)
    if found != recorded:
        raise CheckpointError(f"the base checkpoint {base} is not the one this PEFT checkpoint was trained on "
                              "(its weights differ, though they may have the same shapes: fingerprint "
                              f"{found[:24]}..., recorded {recorded[:24]}...)", where=str(directory / PEFT_CONFIG_NAME),
                              hint="point base_checkpoint in peft.json at the checkpoint the adapter was trained on "
                                   "(the same weights in the same dtype); an adapter on another base gives another "
                                   "model")


def verified_chain(directory: str | Path) -> list[Path]:
    """base_chain(directory), each level's base checked against its recorded fingerprint, from the bottom
    up (a base replaced under a chain is named at the level that stands on it)."""
    chain = base_chain(directory)
    for level, base in reversed(list(zip(chain, chain[1:]))):
        verify_base(level, base)
    return chain


def load_peft_state(model: torch.nn.Module, directory: str | Path, device="cpu") -> None:
    """Load peft_weights.safetensors into an already-adapted model (strict about names and shapes)."""
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
    """The full model at the bottom of the chain, then each PEFT level's methods re-applied and its
    stored trainable weights loaded, base first; no merge step."""
    from ..peft import apply

    chain = verified_chain(directory)
    model = load_full_model(chain[-1], device=device, dtype=dtype)
    for level in reversed(chain[:-1]):
        for entry in read_peft_config(level).get("methods", []):
            apply(model, entry["method"], **entry.get("options", {}))
        load_peft_state(model, level, device)
    return model.eval()
