"""Builders for the checkpoint tests: tiny models with known weights."""
from __future__ import annotations

import torch

from openseason.config import Config
from openseason.model import GPT


def tiny_model(seed: int = 0, name: str = "tiny-neox") -> GPT:
    torch.manual_seed(seed)
    model = GPT(Config.from_name(name))
    model.init_weights()
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained_lora(base, out, scale: float = 0.05):
    """A LoRA (q, v; rank 4) checkpoint on `base` with non-zero weights, as training would leave them."""
    from openseason.checkpoint import load_model, save_train_checkpoint
    from openseason.peft import apply

    model = load_model(base)
    apply(model, "lora", rank=4, alpha=8, targets="q,v")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return save_train_checkpoint(out, model, None, {"step": 1}, base_checkpoint=base), model
