"""Log-probabilities of completion tokens under a model (labels -100 elsewhere), without the full
[rows, T, vocab] logits: only completion positions go through lm_head."""
from __future__ import annotations

import torch

from ...data.sft import IGNORE


def token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probabilities [R, T-1], completion mask [R, T-1] bool); zeros off the completion.
    Computed in float32 (float64 when the model is float64)."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    hidden = model.hidden_states(input_ids, position_ids=batch.get("position_ids"),
                                 segment_ids=batch.get("segment_ids"))
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    if logits.dtype != torch.float64:
        logits = logits.float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, targets[keep].unsqueeze(1)).squeeze(1)
    out = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    out = out.masked_scatter(keep, picked)
    return out, keep


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token log-probabilities per row [R], completion tokens per row [R])."""
    per_token, keep = token_logps(model, batch)
    return per_token.sum(1), keep.sum(1)
