"""Vision encoder checkpoints, in the house style of checkpoint/full.py.

    ENCODER/
      config.json          {"kind": "openseason-vision", "format": 1, "vision": VisionConfig}
      model.safetensors    VisionEncoder.state_dict() (vit.*, qformer.*)
      run_card.json        what made it: converted from (a Hugging Face directory), or trained by
                           `openseason vision train-clip` (data, steps, zero-shot accuracy)

Written into a staging directory and swapped in (fileio.staging_dir / replace_dir): a reader sees
the old encoder or the new one, never half of one. No pickles.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint.full import read_safetensors
from ..checkpoint.full import RUN_CARD_NAME, WEIGHTS_NAME, _now
from ..errors import CheckpointError
from ..fileio import read_json_object, replace_dir, staging_dir, wait_for_dir
from .config import VisionConfig
from .encoder import VisionEncoder

KIND = "openseason-vision"
FORMAT = 1


def save_vision_encoder(directory: str | Path, encoder: VisionEncoder,
                        run_card: Optional[dict[str, Any]] = None) -> Path:
    """Write `encoder` as a vision checkpoint directory, atomically; returns its path."""
    from safetensors.torch import save_file

    final = Path(directory)
    tmp = staging_dir(final)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {"kind": KIND, "format": FORMAT, "vision": encoder.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        card = {"created": _now(), "kind": "vision", **(run_card or {})}
        (tmp / RUN_CARD_NAME).write_text(json.dumps(card, indent=2, default=str) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_vision_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def resolve_vision_dir(directory: str | Path) -> Path:
    """The vision checkpoint a path names: itself, or a `vision train-clip` run's OUT/encoder."""
    directory = Path(directory)
    if not wait_for_dir(directory) or not directory.is_dir():
        raise CheckpointError("vision checkpoint directory not found", where=str(directory))
    if not (directory / "config.json").exists() and (directory / "encoder" / "config.json").exists():
        return directory / "encoder"
    return directory


def load_vision_config(directory: str | Path) -> VisionConfig:
    directory = resolve_vision_dir(directory)
    path = directory / "config.json"
    if not path.exists():
        raise CheckpointError("no config.json", where=str(directory))
    data = read_json_object(path, CheckpointError)
    if data.get("kind") != KIND:
        hint = ("convert a Hugging Face CLIP / BLIP-2 directory with `openseason vision convert HF_DIR OUT`"
                if "model_type" in data else "pass a directory written by `openseason vision convert` or `train-clip`")
        raise CheckpointError("not an openseason vision encoder checkpoint", where=str(path), hint=hint)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"unsupported vision checkpoint format {data.get('format')!r} (this version reads "
                              f"{FORMAT})", where=str(path))
    try:
        return VisionConfig.from_dict(data["vision"])
    except KeyError:
        raise CheckpointError("config.json has no 'vision' object", where=str(path)) from None
    except CheckpointError:
        raise
    except Exception as exc:  # ConfigError from a bad field: name the file
        raise CheckpointError(str(exc), where=str(path)) from None


def load_vision_encoder(directory: str | Path, device="cpu", dtype: Optional[torch.dtype] = None,
                        freeze: bool = True) -> VisionEncoder:
    """A VisionEncoder from a vision checkpoint directory (frozen and in eval mode unless told not)."""
    directory = resolve_vision_dir(directory)
    config = load_vision_config(directory)
    with torch.device("meta"):
        encoder = VisionEncoder(config)
    state = read_safetensors(directory / WEIGHTS_NAME, device) if (directory / WEIGHTS_NAME).exists() else None
    if state is None:
        raise CheckpointError(f"no {WEIGHTS_NAME}", where=str(directory))
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)}, config {s}" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != s]
    if missing or unexpected or wrong:
        raise CheckpointError(f"weights do not match config.json (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatches {wrong[:5]})", where=str(directory))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if encoder.qformer is not None:   # transformers keeps the Q-Former in float32 whatever the tower's dtype
        state.update({k: v.float() for k, v in state.items() if k.startswith("qformer.")})
    encoder.load_state_dict(state, assign=True)
    return encoder.freeze() if freeze else encoder
