"""Training checkpoints and resume: model (full or PEFT), optimizer, step, data position and RNG.

    OUT/step-000100/  (and OUT/final/)
      model files         a full checkpoint (full finetuning / pretraining) or a PEFT one
      optimizer.safetensors   AdamW moments and steps, plus the torch RNG states
      trainer_state.json      step, tokens, data-order position, Python RNG, optimizer param groups

Everything is safetensors or JSON (no pickles) and a directory is staged and swapped into place
(fileio.replace_dir), so a run killed at any moment resumes from the last complete one; `find_resume`
repairs a swap that a kill interrupted and removes the staging directories of dead runs.

Only the newest checkpoint of a run needs the optimizer state (it is what a resume reads, and it
is twice the size of the trained weights): `drop_optimizer_state` removes it from the older ones
after each save unless the run keeps it (`--keep-optimizer`). A checkpoint without it is still an
ordinary checkpoint (load, generate, serve) but is no longer resumable.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import recover_children, replace_dir, staging_dir, wait_for_dir
from ..peft import is_peft
from .full import load_state, model_state_for_saving, read_safetensors, save_weights, write_checkpoint_metadata
from .peft import load_peft_state, write_peft_files

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
STEP_DIR = re.compile(r"^step-(\d{6,})$")
FINAL_NAME = "final"
DCP_NAME = "dcp"            # checkpoint/distributed.py: model + optimizer shards
RNG_NAME = "rng.safetensors"  # checkpoint/distributed.py: the RNG state next to the shards


def step_dir(out_dir: Path, step: int) -> Path:
    """OUT/step-XXXXXX, the checkpoint written after optimizer step `step`."""
    return Path(out_dir) / f"step-{step:06d}"


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Python, NumPy (JSON-able metadata) and torch/CUDA (tensors) random generator states."""
    pystate = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [pystate[0], list(pystate[1]), pystate[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what `rng_state` returned."""
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = meta["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as flat tensors ("opt.INDEX.NAME", for safetensors) and its param groups
    (for JSON)."""
    opt = optimizer.state_dict()
    tensors = {f"opt.{index}.{key}": value.detach().cpu().contiguous().clone()
               for index, values in opt["state"].items() for key, value in values.items()
               if isinstance(value, torch.Tensor)}
    return tensors, opt["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    """Load what `optimizer_tensors` returned (other keys in `tensors` are ignored)."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, values in per_param.items():
        for name, value in values.items():
            if name != "step":
                values[name] = value.to(params[index].device)
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def save_train_checkpoint(directory: Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                          state: dict[str, Any], *, base_checkpoint: Optional[Path] = None, tokenizer=None,
                          tokenizer_dir: Optional[Path] = None, run_card: Optional[dict] = None) -> Path:
    """Write one resumable checkpoint atomically. PEFT models store only their trainable weights."""
    final = Path(directory)
    tmp = staging_dir(final)
    try:
        peft = is_peft(model)
        if peft:
            if base_checkpoint is None:
                raise CheckpointError("a PEFT checkpoint needs the base checkpoint it stands on")
            write_peft_files(tmp, final, model, base_checkpoint)
        else:
            save_weights(model_state_for_saving(model), tmp)
        write_checkpoint_metadata(tmp, model.config, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                                  run_card=run_card, kind="peft" if peft else "full")
        tensors: dict[str, torch.Tensor] = {}
        meta = dict(state)
        if optimizer is not None:
            tensors, meta["optimizer_param_groups"] = optimizer_tensors(optimizer)
        rng_meta, rng_tensors = rng_state()
        meta["rng"] = rng_meta
        tensors.update(rng_tensors)
        from safetensors.torch import save_file
        save_file(tensors, str(tmp / OPTIMIZER_NAME), metadata={"format": "pt"})
        (tmp / STATE_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_resumable(directory: Path) -> bool:
    """A complete training checkpoint that still holds its optimizer state (single-process or DCP)."""
    directory = Path(directory)
    return (directory / STATE_NAME).exists() and ((directory / OPTIMIZER_NAME).exists()
                                                  or (directory / DCP_NAME).is_dir())


def checkpoint_step(directory: Path) -> int:
    """The optimizer step a training checkpoint was written after (from its trainer state)."""
    return int(json.loads((Path(directory) / STATE_NAME).read_text())["step"])


def training_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-XXXXXX and final under out_dir that holds a trainer state, oldest first."""
    found = []
    for child in Path(out_dir).iterdir():
        match = STEP_DIR.match(child.name)
        if (match or child.name == FINAL_NAME) and (child / STATE_NAME).exists():
            step = int(match.group(1)) if match else checkpoint_step(child)
            # at equal steps the step-XXXXXX sorts last (newest): it is the one `--resume auto` names
            found.append((step, 1 if match else 0, child))
    return [(step, path) for step, _, path in sorted(found)]


def drop_optimizer_state(out_dir: Path, keep: Path) -> list[Path]:
    """Remove the optimizer state (and RNG, useless without it) from every training checkpoint under
    out_dir but `keep`; returns the checkpoints changed. Each removal is one unlink or rename, so a
    kill in between leaves every checkpoint either resumable or plainly not."""
    changed = []
    keep = Path(keep).resolve()
    for _, path in training_checkpoints(out_dir):
        if path.resolve() == keep or not is_resumable(path):
            continue
        dcp = path / DCP_NAME
        if dcp.is_dir():
            trash = path / f".{DCP_NAME}.dropped"
            os.replace(dcp, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for name in (OPTIMIZER_NAME, RNG_NAME):
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
        changed.append(path)
    return changed


def find_resume(out_dir: Path, resume: Optional[str | Path]) -> Optional[Path]:
    """`auto`: the newest resumable step-XXXXXX or final under out_dir, or None; a path: that checkpoint."""
    if resume is None or resume is False:
        return None
    if str(resume) == "auto":
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            return None
        recover_children(out_dir)
        every = [path for _, path in training_checkpoints(out_dir)]
        found = [path for path in every if is_resumable(path)]
        if every and not found:  # never start over silently next to an earlier run's checkpoints
            raise CheckpointError("no checkpoint here holds optimizer state, so none can be resumed exactly",
                                  where=str(out_dir),
                                  hint="the newest checkpoint of a run keeps it (and every one with --keep-optimizer); "
                                       "start over with --overwrite, or finetune from a checkpoint into a new --out")
        return found[-1] if found else None
    path = Path(resume)
    wait_for_dir(path)
    if not (path / STATE_NAME).exists():
        raise CheckpointError(f"no {STATE_NAME} here, so it cannot be resumed", where=str(path),
                              hint="pass a step-XXXXXX directory written by a training run, or --resume auto")
    if not is_resumable(path):
        raise CheckpointError("this checkpoint holds no optimizer state, so it cannot be resumed exactly",
                              where=str(path),
                              hint="only the newest checkpoint of a run keeps it (train with --keep-optimizer to "
                                   "keep it in every step-XXXXXX); resume from the newest, or finetune from this "
                                   "one as a new run")
    return path


def load_train_checkpoint(directory: Path, model: torch.nn.Module,
                          optimizer: Optional[torch.optim.Optimizer], device="cpu") -> dict[str, Any]:
    """Restore weights, optimizer and RNG from `directory` into an already-built (and adapted) model;
    returns the trainer state (step, data position, ...)."""
    directory = Path(directory)
    meta = json.loads((directory / STATE_NAME).read_text())
    if is_peft(model):
        load_peft_state(model, directory, device)
    else:
        state = load_state(directory, device)
        if getattr(model.config, "tie_embeddings", False):
            state.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
        if missing or unexpected:
            raise CheckpointError(f"resume weights do not fit the model (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]})", where=str(directory))
    tensors = read_safetensors(directory / OPTIMIZER_NAME, "cpu")
    if optimizer is not None and "optimizer_param_groups" in meta:
        restore_optimizer(optimizer, tensors, meta["optimizer_param_groups"])
    set_rng_state(meta["rng"], tensors)
    return meta
