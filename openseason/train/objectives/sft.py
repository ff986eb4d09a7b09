"""Supervised finetuning (and pretraining): summed token cross-entropy over target tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.sft import IGNORE


def _ce_sum(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def compile_head_loss(model) -> None:
    """Make `token_loss_sum` run the output head and its cross-entropy through torch.compile for this
    model (train.loop.compile_blocks does this for --compile)."""
    from ...generation.speed import compile_own

    model._compiled_head_loss = compile_own(_ce_sum, dynamic=True)


def token_loss_sum(model, batch: dict, chunk: int = 4096, *, inputs_embeds=None,
                   extras=None) -> tuple[torch.Tensor, int]:
    """(sum of cross-entropy over target tokens, number of target tokens) for one micro-batch.

    Only positions with a target go through lm_head, in chunks whose logits are recomputed in the
    backward pass, so the [tokens, vocab] logits never exist for the whole batch at once.
    `inputs_embeds` / `extras` go to the model as they are (images: objectives/multimodal.py).
    """
    input_ids = batch["input_ids"]
    # Right padding never influences earlier positions under a causal mask, so padded rows need no
    # attention mask (keeping SDPA's fast causal path); packed rows need their segments.
    hidden = model.hidden_states(input_ids, position_ids=batch.get("position_ids"),
                                 segment_ids=batch.get("segment_ids"), inputs_embeds=inputs_embeds, extras=extras)
    if "targets" in batch:
        targets, predictors = batch["targets"], hidden
    else:
        targets, predictors = batch["labels"][:, 1:], hidden[:, :-1]
    keep = targets != IGNORE
    h = predictors[keep]
    t = targets[keep]
    n = int(t.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    ce_sum = getattr(model, "_compiled_head_loss", None) or _ce_sum
    if n <= chunk:
        return ce_sum(model.lm_head, h, t), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        total = total + torch.utils.checkpoint.checkpoint(ce_sum, model.lm_head, h[start:start + chunk],
                                                          t[start:start + chunk], use_reentrant=False)
    return total, n


def count_targets(batch: dict) -> int:
    if "targets" in batch:
        return int((batch["targets"] != IGNORE).sum())
    return int((batch["labels"][:, 1:] != IGNORE).sum())


class SFTObjective:
    """The default objective: the loss is the step's summed token cross-entropy / its target tokens."""

    name = "sft"
    weights = {"tokens": 1.0}
    metric_fields: dict[str, str] = {}

    def __init__(self, chunk: int = 4096):
        self.chunk = chunk

    def counts(self, batch: dict) -> dict[str, int]:
        return {"tokens": count_targets(batch)}

    def loss(self, model, batch: dict):
        total, _ = token_loss_sum(model, batch, self.chunk)
        return {"tokens": total}, {}
