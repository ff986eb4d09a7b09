"""AdamW and the learning-rate schedule: linear warmup, then cosine decay to min_lr.

The schedule is a pure function of the step, so resuming needs only the step count.
"""
from __future__ import annotations

import math

import torch


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup to lr, then cosine to min_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, vectors (biases, norms, gates, scales) do not."""
    decay, no_decay, seen = [], [], set()
    for _name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if fused is None:
        # Fused kernels exist for CUDA and (torch >= 2.4) CPU floating-point tensors.
        fused = all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for g in groups for p in g["params"])
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
