"""Micro-batch sources for the loop (the `data` protocol in loop.py) over tokenized SFT examples."""
from __future__ import annotations

import math
from typing import Optional

from ..data.sft import ShuffledSampler, batches, collate


class SFTBatches:
    """Endless shuffled micro-batches of tokenized examples; the position is saved with checkpoints."""

    def __init__(self, examples, micro_batch_size: int, pad_id: int, max_length: int, seed: int = 0,
                 packing: bool = False):
        self.examples = examples
        self.micro_batch_size = micro_batch_size
        self.pad_id, self.max_length, self.packing = pad_id, max_length, packing
        self.sampler = ShuffledSampler(len(examples), seed=seed)
        self._iter = None
        # With packing the number of rows per epoch depends on lengths; this estimate is only for `epochs`.
        if packing:
            tokens = sum(min(len(e["input_ids"]), max_length) for e in examples)
            self.batches_per_epoch = max(1, math.ceil(tokens / (max_length * micro_batch_size)))
        else:
            self.batches_per_epoch = max(1, math.ceil(len(examples) / micro_batch_size))

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def next_batch(self) -> dict:
        if self._iter is None:
            self._iter = batches(self.examples, self.sampler, self.micro_batch_size, self.pad_id,
                                 self.max_length, packing=self.packing)
        return next(self._iter)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self._iter = None


def fixed_batches(examples, micro_batch_size: int, pad_id: int, max_length: int,
                  limit: Optional[int] = None) -> list[dict]:
    """Validation batches in a fixed order (the same tokens at every evaluation)."""
    examples = list(examples)[:limit] if limit else list(examples)
    return [collate(examples[i:i + micro_batch_size], pad_id, max_length)
            for i in range(0, len(examples), micro_batch_size)]
