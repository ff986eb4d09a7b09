"""Full checkpoints: safetensors weights, config.json, tokenizer files and a run card.

    CKPT/
      config.json                      openseason Config (see config.py)
      model.safetensors                or model-00001-of-0000N.safetensors + model.safetensors.index.json
      tokenizer.json, tokenizer_config.json, ...
      run_card.json                    what made it: prompt style, lineage, recipe, metrics

We never write pickles. A whole directory is written into a staging directory next to its target
and swapped into place (fileio.staging_dir / replace_dir), so a reader sees the old checkpoint or
the new one, never a half-written one, even after a kill -9 in the middle of the swap.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config
from ..errors import CheckpointError
from ..fileio import replace_dir, staging_dir, wait_for_dir, write_json_atomic

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
RUN_CARD_NAME = "run_card.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head copy (safetensors refuses shared storage)."""
    state = model.state_dict()
    if getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def save_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write `state` as one safetensors file, or shards plus an index above `max_shard_bytes`."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2) + "\n")
    return names


def write_checkpoint_metadata(directory: Path, config: Config, *, tokenizer=None,
                              tokenizer_dir: Optional[str | Path] = None, run_card: Optional[dict[str, Any]] = None,
                              kind: str = "full") -> None:
    """config.json, the tokenizer files and run_card.json: what every checkpoint holds besides weights."""
    from ..tokenizer import copy_tokenizer_files

    directory = Path(directory)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)
    elif tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, directory)
    card = {"created": _now(), "kind": kind, **(run_card or {})}
    (directory / RUN_CARD_NAME).write_text(json.dumps(card, indent=2, default=str) + "\n")


def save_checkpoint(directory: str | Path, model: torch.nn.Module, *, tokenizer=None,
                    tokenizer_dir: Optional[str | Path] = None, run_card: Optional[dict[str, Any]] = None,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write a full-model checkpoint directory atomically; returns its path."""
    final = Path(directory)
    tmp = staging_dir(final)
    try:
        save_weights(model_state_for_saving(model), tmp, max_shard_bytes)
        write_checkpoint_metadata(tmp, model.config, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                                  run_card=run_card)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_run_card(directory: str | Path) -> dict[str, Any]:
    """What made the checkpoint (run_card.json), or {} when it has none."""
    wait_for_dir(directory)
    path = Path(directory) / RUN_CARD_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"malformed JSON: {exc.msg}", where=f"{path}:{exc.lineno}:{exc.colno}") from None


def update_run_card(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run_card.json (atomically)."""
    card = read_run_card(directory)
    card.update(fields)
    write_json_atomic(Path(directory) / RUN_CARD_NAME, card)
    return card


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a full checkpoint: the shards its index lists, or model.safetensors."""
    index = directory / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"malformed shard index ({exc})", where=str(index)) from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).exists()]
        if missing:
            raise CheckpointError(f"shard files listed in the index are missing: {missing}", where=str(index))
        return [directory / f for f in files]
    single = directory / WEIGHTS_NAME
    if single.exists():
        return [single]
    raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME}", where=str(directory),
                          hint="is this an openseason checkpoint? convert Hugging Face models with "
                               "`openseason convert from-hf`")


def read_safetensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """Load one safetensors file; a corrupt or truncated file becomes a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or truncated safetensors file ({exc})", where=str(path)) from None


def load_state(directory: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    """All weights of a full checkpoint (every shard) as one state dict."""
    directory = Path(directory)
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        state.update(read_safetensors(file, device))
    return state


def check_state_against_model(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str,
                              ignore_missing: tuple[str, ...] = ()) -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches (before loading)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(k for k in expected if k not in state and not k.endswith(ignore_missing))
    unexpected = sorted(k for k in state if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing weight keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected weight keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            problems.append(f"shape mismatch for {key}: checkpoint {tuple(state[key].shape)}, model {shape}")
    if problems:
        raise CheckpointError("; ".join(problems), where=where,
                              hint="the weights do not match config.json; was the checkpoint written for another model?")


def load_config(directory: str | Path) -> Config:
    """The model Config a checkpoint directory (full or PEFT) was written for."""
    wait_for_dir(directory)
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError("no config.json", where=str(directory))
    if _is_hugging_face_config(path):
        raise CheckpointError("this is a Hugging Face model folder, not an openseason checkpoint", where=str(directory),
                              hint=f"convert it with `openseason convert from-hf {directory} OUT`, then use OUT")
    return Config.from_file(path)


# Keys transformers writes into every config.json and openseason's Config never has.
_HF_CONFIG_KEYS = ("model_type", "architectures", "transformers_version")


def _is_hugging_face_config(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False   # Config.from_file reports it with file:line:col
    return isinstance(data, dict) and any(key in data for key in _HF_CONFIG_KEYS)


def build_model(config: Config):
    """Build an uninitialized model on the meta device (no memory) for weights to be assigned into."""
    from ..model import GPT

    with torch.device("meta"):
        model = GPT(config)
    return model


def load_full_model(directory: str | Path, device="cpu", dtype: Optional[torch.dtype] = None):
    """Load a full checkpoint directory into a GPT on `device` (weights cast to `dtype` if given).
    `checkpoint.load_model` also loads PEFT checkpoints; use that unless you need a full one."""
    directory = Path(directory)
    if not wait_for_dir(directory) or not directory.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(directory))
    config = load_config(directory)
    model = build_model(config)
    state = load_state(directory, device)
    check_state_against_model(state, model, where=str(directory))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.init_rope(device=torch.device(device))
    return model.eval()
