"""Distance metrics d(x, y) of the consistency losses, per sample over the whole image vector:

    l2            ||x - y||_2^2                       (the paper's squared l2)
    l1            ||x - y||_1
    pseudo-huber  sqrt(||x - y||_2^2 + c^2) - c      (iCT; c = 0.00054 sqrt(d) by default)

(LPIPS needs downloaded ImageNet weights, so it is not offered.)
"""
from __future__ import annotations

from typing import Optional

import torch

from .params import pseudo_huber_c

METRICS = ("l2", "l1", "pseudo-huber")


def distance(x: torch.Tensor, y: torch.Tensor, metric: str, c: Optional[float] = None) -> torch.Tensor:
    """d(x, y) per sample: a [B] tensor."""
    diff = (x - y).flatten(1)
    if metric == "l2":
        return (diff ** 2).sum(1)
    if metric == "l1":
        return diff.abs().sum(1)
    if metric == "pseudo-huber":
        if c is None:
            c = pseudo_huber_c(diff.shape[1])
        return torch.sqrt((diff ** 2).sum(1) + c * c) - c
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
