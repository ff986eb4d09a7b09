"""Multi-process training with PyTorch's own engine: torchrun, FSDP2 and torch.distributed.checkpoint.

    torchrun --nproc-per-node 8 -m openseason pretrain --config pythia-1b --data TOKENS --out RUN

`DistributedRun` is what the one training loop needs to know about the other processes: it reduces
token counts and losses across ranks, decides who writes logs, and saves/loads resumable state.

* Sharding: `fully_shard` on every transformer block, then on the root (FSDP2, parameters as
  DTensors); bf16 parameters with fp32 gradient reduction on GPU.
* Loss: each rank divides its summed token loss by the number of target tokens across ALL ranks
  and micro-batches of the step, times the world size (FSDP averages gradients over ranks), so the
  gradient is exactly that of one big batch: N processes and 1 process give the same step.
* Checkpoints: the model and optimizer state go through torch.distributed.checkpoint (DCP) in a
  `dcp/` folder, so a run saved on N processes resumes on M; rank 0 also writes the full model as an
  ordinary safetensors checkpoint next to it, so LLM.load, generate and serve read any step directly.
  The same format is used by a single process, so resuming on 1 process works too.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..checkpoint import fsync_dir, replace_dir, save_weights, write_checkpoint_metadata
from ..errors import CheckpointError

DCP_DIR = "dcp"
STATE_NAME = "trainer_state.json"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


@dataclass
class DistributedRun:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    # -- set-up --------------------------------------------------------------------------------------
    @classmethod
    def from_environment(cls, device: Optional[str] = None) -> "DistributedRun":
        """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); one process otherwise."""
        if not launched_by_torchrun():
            dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            return cls(device=dev)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local)
        dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        created = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
            created = True
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, initialized_here=created)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # -- reductions ----------------------------------------------------------------------------------
    def sum(self, value: float | int) -> float:
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item()

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- sharding ------------------------------------------------------------------------------------
    def shard(self, model: torch.nn.Module, bf16_params: bool = False) -> torch.nn.Module:
        """FSDP2: shard each block, then the root (embedding, final norm, head)."""
        if not self.active:
            return model.to(self.device)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if bf16_params else MixedPrecisionPolicy())
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        if not model.config.tie_embeddings:
            # the loop applies lm_head itself, in chunks, after hidden_states(): its own unit
            fully_shard(model.lm_head, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        register_fsdp_forward_method(model, "hidden_states")
        model.to(self.device)
        model.init_rope(device=self.device)
        return model

    def loss_scale(self) -> float:
        """FSDP averages gradients over ranks; undo it so the step equals one big batch."""
        return float(self.world_size)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self, directory: Path, model, optimizer, state: dict, *, tokenizer=None, tokenizer_dir=None,
             run_card: Optional[dict] = None) -> Path:
        """Write DCP model+optimizer shards and (rank 0) a full safetensors checkpoint; atomic rename."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

        from .state import rng_state

        final = Path(directory)
        tmp = final.with_name(f".{final.name}.tmp-dcp")
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        with _single_process_quiet():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR),
                     no_dist=not self.active)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.is_main:
            if getattr(model.config, "tie_embeddings", False):
                full.pop("lm_head.weight", None)
            save_weights(full, tmp)
            write_checkpoint_metadata(tmp, model.config, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                                      run_card={"world_size": self.world_size, **(run_card or {})})
            rng_meta, rng_tensors = rng_state()
            from safetensors.torch import save_file

            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            meta = {**state, "rng": rng_meta, "format": "dcp", "world_size": self.world_size}
            (tmp / STATE_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            replace_dir(tmp, final)
            fsync_dir(final.parent)
        self.barrier()
        return final

    def load(self, directory: Path, model, optimizer) -> dict:
        """Restore a DCP checkpoint saved on any number of processes into this run's (sharded) model."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from ..checkpoint import read_safetensors
        from .state import set_rng_state

        directory = Path(directory)
        if not (directory / DCP_DIR).is_dir():
            raise CheckpointError("not a distributed (DCP) training checkpoint", where=str(directory),
                                  hint="resume it with the command that wrote it (finetune without torchrun)")
        meta = json.loads((directory / STATE_NAME).read_text())
        model_state, optim_state = get_state_dict(model, optimizer)
        target = {"model": model_state, "optim": optim_state}
        with _single_process_quiet():
            dcp.load(target, checkpoint_id=str(directory / DCP_DIR), no_dist=not self.active)
        set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
        set_rng_state(meta["rng"], read_safetensors(directory / "rng.safetensors"))
        return meta


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it 'assumes' single-process use when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_dcp_checkpoint(directory: Path) -> bool:
    return (Path(directory) / DCP_DIR).is_dir()
