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
