"""The objective protocol: what the one loop (`train.loop.train`) asks of a training objective.

    objective.counts(batch) -> {"tokens": 812}          normalizers of one micro-batch (ints)
    objective.loss(model, batch) -> (terms, metrics)
        terms    {"tokens": sum of token losses, ...}   tensors; each is divided by the SUM of its
                                                        normalizer over the whole optimizer step
        metrics  {"reward_acc": 3.0, ...}               floats, also sums; `metric_fields` names the
                                                        normalizer each one is divided by
    objective.weights  {"tokens": 1.0}                  weight of each term (distill: alpha, 1 - alpha)
    objective.metric_fields  {"reward_acc": "pairs"}    extra metrics.csv / TensorBoard columns

The step's loss is  sum_k weights[k] * (sum over micro-batches of terms[k]) / (sum of counts[k])
so gradient accumulation is exact whatever the micro-batch split: SFT is token-normalized, the
preference losses are pair-normalized (the mean over pairs of the step, as TRL's per-batch mean),
ORPO mixes a token-normalized NLL with a pair-normalized odds-ratio term.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Objective(Protocol):
    name: str
    weights: dict[str, float]
    metric_fields: dict[str, str]

    def counts(self, batch: dict) -> dict[str, int]: ...

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]: ...


def combine(terms: dict[str, torch.Tensor], totals: dict[str, int], weights: dict[str, float]) -> torch.Tensor:
    """sum_k weights[k] * terms[k] / totals[k] (a term whose normalizer is 0 over the step adds 0)."""
    loss = None
    for key, value in terms.items():
        part = value * (float(weights.get(key, 1.0)) / max(int(totals.get(key, 0)), 1))
        loss = part if loss is None else loss + part
    return loss
