"""Distributed training checkpoints through torch.distributed.checkpoint (DCP).

    OUT/step-XXXXXX/
      dcp/                    model + optimizer shards (DCP): saved on N processes, resumable on M
      model.safetensors ...   the full model as an ordinary checkpoint (rank 0), so LLM.load, generate
      config.json, ...        and serve read any step directly
      rng.safetensors         torch RNG state (rank 0)
      trainer_state.json      step, tokens, data position, Python/NumPy RNG, "format": "dcp"

`run` is anything with `is_main`, `active`, `world_size` and `barrier()` (train.distributed.DistributedRun).
Every rank writes its DCP shard into one staging directory that rank 0 then swaps into place.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError
from ..fileio import replace_dir, wait_for_dir
from .full import read_safetensors, save_weights, write_checkpoint_metadata
from .training import DCP_NAME as DCP_DIR, RNG_NAME, STATE_NAME, rng_state, set_rng_state


def is_dcp_checkpoint(directory: Path) -> bool:
    wait_for_dir(directory)
    return (Path(directory) / DCP_DIR).is_dir()


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it 'assumes' single-process use when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_dcp_checkpoint(run, directory: Path, model, optimizer, state: dict, *, tokenizer=None,
                        tokenizer_dir=None, run_card: Optional[dict] = None) -> Path:
    """Write DCP model+optimizer shards (every rank) and a full safetensors checkpoint (rank 0)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    final = Path(directory)
    # One name every rank agrees on without talking; a leftover from a killed run is replaced here.
    tmp = final.with_name(f".{final.name}.tmp-dcp")
    if run.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    run.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR),
                 no_dist=not run.active)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if run.is_main:
        if getattr(model.config, "tie_embeddings", False):
            full.pop("lm_head.weight", None)
        save_weights(full, tmp)
        write_checkpoint_metadata(tmp, model.config, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                                  run_card={"world_size": run.world_size, **(run_card or {})})
        rng_meta, rng_tensors = rng_state()
        from safetensors.torch import save_file

        save_file(rng_tensors, str(tmp / RNG_NAME))
        meta = {**state, "rng": rng_meta, "format": "dcp", "world_size": run.world_size}
        (tmp / STATE_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        replace_dir(tmp, final)
    run.barrier()
    return final


def load_dcp_checkpoint(run, directory: Path, model, optimizer) -> dict:
    """Restore a DCP checkpoint saved on any number of processes into this run's (sharded) model;
    returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    directory = Path(directory)
    if not is_dcp_checkpoint(directory):
        raise CheckpointError("not a distributed (DCP) training checkpoint", where=str(directory),
                              hint="resume it with the command that wrote it (finetune without torchrun)")
    meta = json.loads((directory / STATE_NAME).read_text())
    model_state, optim_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optim": optim_state}
    with _single_process_quiet():
        dcp.load(target, checkpoint_id=str(directory / DCP_DIR), no_dist=not run.active)
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    set_rng_state(meta["rng"], read_safetensors(directory / RNG_NAME))
    return meta
