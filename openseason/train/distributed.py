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
  The same format is used by a single process, so resuming on 1 process works too. The format is
  openseason.checkpoint.distributed; this module only calls it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..checkpoint.distributed import is_dcp_checkpoint, load_dcp_checkpoint, save_dcp_checkpoint

__all__ = ["DistributedRun", "launched_by_torchrun", "is_dcp_checkpoint"]


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

    # -- checkpoints (the format lives in checkpoint/distributed.py) -------------------------------------
    def save(self, directory: Path, model, optimizer, state: dict, *, tokenizer=None, tokenizer_dir=None,
             run_card: Optional[dict] = None) -> Path:
        """Write DCP model+optimizer shards and (rank 0) a full safetensors checkpoint; atomic swap."""
        return save_dcp_checkpoint(self, directory, model, optimizer, state, tokenizer=tokenizer,
                                   tokenizer_dir=tokenizer_dir, run_card=run_card)

    def load(self, directory: Path, model, optimizer) -> dict:
        """Restore a DCP checkpoint saved on any number of processes into this run's (sharded) model."""
        return load_dcp_checkpoint(self, directory, model, optimizer)
