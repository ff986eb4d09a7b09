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


class SampledBatches:
    """Endless shuffled micro-batches of `micro_batch_size` items drawn by a ShuffledSampler (whose
    position is saved with checkpoints); subclasses turn the drawn indices into a batch in `make`."""

    def __init__(self, n: int, micro_batch_size: int, seed: int = 0):
        self.micro_batch_size = micro_batch_size
        self.sampler = ShuffledSampler(n, seed=seed)
        self.batches_per_epoch = max(1, math.ceil(n / micro_batch_size))

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def make(self, indices: list[int]) -> dict:
        raise NotImplementedError

    def next_batch(self) -> dict:
        return self.make([next(self.sampler) for _ in range(self.micro_batch_size)])

    def fixed(self, indices: list[int]) -> list[dict]:
        """Batches of `indices` in this order (validation: the same items at every evaluation)."""
        step = self.micro_batch_size
        return [self.make(indices[i:i + step]) for i in range(0, len(indices), step)]

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


class PairBatches(SampledBatches):
    """Endless shuffled micro-batches of preference pairs (`data.preferences.collate_pairs`).

    `reference` [N, 3] holds the reference model's log-probabilities of each pair's chosen, rejected
    and (KTO) mismatched completion; they ride along as "ref_logps". With `kto` each pair i also gets
    the row (prompt i, chosen completion of pair i+1 mod N): a fixed mismatch, so its reference
    log-probability can be computed once like the others."""

    def __init__(self, examples, micro_batch_size: int, pad_id: int, seed: int = 0, reference=None,
                 kto: bool = False):
        super().__init__(len(examples), micro_batch_size, seed)
        self.examples, self.pad_id = examples, pad_id
        self.reference, self.kto = reference, kto

    def make(self, indices: list[int]) -> dict:
        from ..data.preferences import collate_pairs

        import torch

        chosen = [self.examples[i] for i in indices]
        kl = [self.examples[(i + 1) % len(self.examples)] for i in indices] if self.kto else None
        batch = collate_pairs(chosen, self.pad_id, kl)
        if self.reference is not None:
            idx = torch.tensor(indices, dtype=torch.long)
            parts = [self.reference[idx, 0], self.reference[idx, 1]] + ([self.reference[idx, 2]] if self.kto else [])
            batch["ref_logps"] = torch.cat(parts)
        return batch


class MultimodalBatches(SampledBatches):
    """Endless shuffled micro-batches of tokenized examples that may hold images (padded, not packed).

    Each batch is `collate`'s plus the images of its examples as `pixel_values` [M, 3, H, W],
    `image_rows` [M] and `image_starts` [M] (peft/media.py), read from disk and preprocessed by the
    model's front-end (`preprocess`) when the batch is made; relative image paths are read from
    `base_dir`. Rows with and without images mix freely."""

    def __init__(self, examples, micro_batch_size: int, pad_id: int, max_length: int, preprocess, base_dir=None,
                 seed: int = 0):
        super().__init__(len(examples), micro_batch_size, seed)
        self.examples, self.pad_id, self.max_length = examples, pad_id, max_length
        self.preprocess, self.base_dir = preprocess, base_dir

    def make(self, indices: list[int]) -> dict:
        return collate_multimodal([self.examples[i] for i in indices], self.pad_id, self.max_length,
                                  self.preprocess, self.base_dir)


def collate_multimodal(examples: list[dict], pad_id: int, max_length: int, preprocess, base_dir=None) -> dict:
    """`collate` plus the examples' images (see MultimodalBatches)."""
    import torch

    from ..peft.media import open_image_part

    batch = collate(examples, pad_id, max_length)
    pixels, rows, starts = [], [], []
    for row, ex in enumerate(examples):
        for image in ex.get("images", ()):
            pixels.append(preprocess(open_image_part(image["part"], base_dir, where=ex.get("where"))))
            rows.append(row)
            starts.append(image["start"])
    if pixels:
        batch["pixel_values"] = torch.stack(pixels)
        batch["image_rows"] = torch.tensor(rows, dtype=torch.long)
        batch["image_starts"] = torch.tensor(starts, dtype=torch.long)
    return batch
