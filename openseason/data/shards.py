"""The deterministic pretraining loader over a token-shard directory (see data/tokenize.py).

The stream is cut into samples of seq_len + 1 tokens: sample j is tokens [j*seq_len, j*seq_len +
seq_len + 1), so consecutive samples share one boundary token, as GPT-NeoX/Pythia training does. Step
i of a run with global batch B reads exactly samples [B*i, B*(i+1)) (wrapping around after the last
sample, one epoch at a time), whatever the number of processes: rank r of N takes the r-th contiguous
slice of B/N of them. So a run on 1 process and on N processes sees the same data in the same order,
and `openseason data batch --step i` shows what any step trained on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DataError
from .tokenize import read_manifest, shard_path


class TokenStream:
    """All shards of a token directory as one memory-mapped sequence of token ids."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.shards = []
        for shard in self.manifest["shards"]:
            file = shard_path(self.directory, shard["file"])
            size = file.stat().st_size if file.exists() else -1
            if size != shard["tokens"] * dtype.itemsize:
                raise DataError(f"shard has {size} bytes, the manifest says {shard['tokens']} tokens",
                                where=str(file), hint="the directory is damaged; tokenize again")
            self.shards.append(np.memmap(file, dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype))
        self.starts = np.cumsum([0] + [s.size for s in self.shards])
        self.total = int(self.starts[-1])
        self.eos_id = self.manifest["eos_id"]

    def __len__(self) -> int:
        return self.total

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the stream, across shard boundaries."""
        if start < 0 or start + length > self.total:
            raise IndexError(f"tokens [{start}, {start + length}) outside the stream of {self.total}")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.starts, start, side="right") - 1)
        pos = start - int(self.starts[shard])
        while filled < length:
            piece = self.shards[shard][pos:pos + length - filled]
            out[filled:filled + piece.size] = piece
            filled += piece.size
            shard += 1
            pos = 0
        return out


class PretrainLoader:
    """Fixed-length samples in a fixed order; `batch(step)` is a pure function of the step."""

    def __init__(self, directory: str | Path, seq_len: int, global_batch: int, rank: int = 0, world_size: int = 1):
        if seq_len < 1 or global_batch < 1:
            raise DataError(f"--seq-len and the batch size must be >= 1, not {seq_len} and {global_batch}")
        self.stream = TokenStream(directory)
        if global_batch % world_size:
            raise DataError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.rank, self.world_size = rank, world_size
        self.num_samples = (len(self.stream) - 1) // seq_len
        if self.num_samples < 1:
            raise DataError(f"the token stream ({len(self.stream)} tokens) is shorter than one sample "
                            f"of {seq_len + 1} tokens", where=str(directory))

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def sample(self, index: int) -> np.ndarray:
        j = index % self.num_samples
        return self.stream.read(j * self.seq_len, self.seq_len + 1)

    def sample_indices(self, step: int, rank: Optional[int] = None) -> range:
        rank = self.rank if rank is None else rank
        first = step * self.global_batch + rank * self.per_rank
        return range(first, first + self.per_rank)

    def batch(self, step: int, rank: Optional[int] = None) -> dict[str, torch.Tensor]:
        """{"input_ids": [b, seq_len], "targets": [b, seq_len]} for this rank's share of `step`: the
        first seq_len tokens of each sample, and the token that follows each of them."""
        rows = np.stack([self.sample(i) for i in self.sample_indices(step, rank)])
        tokens = torch.from_numpy(rows)
        return {"input_ids": tokens[:, :-1].contiguous(), "targets": tokens[:, 1:].contiguous()}

    def state_dict(self) -> dict:
        # Nothing to save but the step, which the training loop owns: the order is a pure function of it.
        return {"seq_len": self.seq_len, "global_batch": self.global_batch, "num_samples": self.num_samples}


def describe_step(directory: str | Path, step: int, seq_len: int, global_batch: int, tokenizer=None,
                  max_chars: int = 200) -> list[dict]:
    """What step `step` trained on: sample indices, token ids and (with a tokenizer) text."""
    if step < 0:
        raise DataError(f"--step must be >= 0, not {step}")
    loader = PretrainLoader(directory, seq_len, global_batch)
    rows = []
    for index in loader.sample_indices(step):
        tokens = loader.sample(index)
        row = {"sample": index, "wrapped_sample": index % loader.num_samples,
               "token_offset": (index % loader.num_samples) * seq_len, "tokens": tokens.tolist()}
        if tokenizer is not None:
            text = tokenizer.decode(tokens.tolist(), skip_special_tokens=False)
            row["text"] = text if len(text) <= max_chars else text[:max_chars] + "..."
        rows.append(row)
    return rows
