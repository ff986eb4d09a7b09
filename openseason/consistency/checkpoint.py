"""Run directories of consistency training, and resume.

    RUN/config.json                 resolved options, U-Net shape, noise spec, data, teacher fingerprint
    RUN/step-XXXXXX/ and RUN/final/
      model.safetensors             the online network F (theta)
      target.safetensors            theta^- of CT / CD (absent for iCT and edm)
      ema.safetensors               the EMA used for sampling
      optimizer.safetensors         Adam moments and steps, and the training generator's state
      state.json                    step, Adam param groups, elapsed time

Each checkpoint directory is staged and swapped in (fileio.staging_dir / replace_dir), so a kill -9
at any moment leaves the previous complete one; everything is safetensors or JSON.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import recover_children, replace_dir, staging_dir

CONFIG_NAME = "config.json"
STATE_NAME = "state.json"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / f"step-{step:06d}"


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(directory: Path, *, model, target, ema, optimizer, generator: torch.Generator,
                    state: dict) -> Path:
    """Write one resumable checkpoint atomically."""
    final = Path(directory)
    tmp = staging_dir(final)
    try:
        save_file(_tensors(model), str(tmp / "model.safetensors"))
        if target is not None:
            save_file(_tensors(target), str(tmp / "target.safetensors"))
        save_file(_tensors(ema), str(tmp / "ema.safetensors"))
        opt = optimizer.state_dict()
        tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous().clone()
                   for i, values in opt["state"].items() for k, v in values.items() if isinstance(v, torch.Tensor)}
        tensors["rng.generator"] = generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()  # dropout draws from the global generator
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {**state, "optimizer_param_groups": opt["param_groups"]}
        (tmp / STATE_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_latest(out: Path) -> Optional[Path]:
    """The checkpoint with the highest step under `out` (step-XXXXXX or final), or None."""
    out = Path(out)
    if not out.is_dir():
        return None
    recover_children(out)
    found = []
    for child in out.iterdir():
        if (child / STATE_NAME).exists() and (STEP_DIR.match(child.name) or child.name == "final"):
            step = int(json.loads((child / STATE_NAME).read_text())["step"])
            found.append((step, child.name == "final", child))
    return max(found)[2] if found else None


def _load_into(module: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise CheckpointError("missing weights file", where=str(path))
    module.load_state_dict(load_file(str(path)), strict=True)


def load_checkpoint(directory: Path, *, model, target, ema, optimizer, generator: torch.Generator) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the state (step, ...)."""
    directory = Path(directory)
    meta = json.loads((directory / STATE_NAME).read_text())
    _load_into(model, directory / "model.safetensors")
    if target is not None:
        _load_into(target, directory / "target.safetensors")
    _load_into(ema, directory / "ema.safetensors")
    tensors = load_file(str(directory / "optimizer.safetensors"))
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["optimizer_param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def prune(out: Path, keep_last: Optional[int]) -> None:
    if not keep_last:
        return
    steps = sorted((int(m.group(1)), p) for p in Path(out).iterdir() if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
