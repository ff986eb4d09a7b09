"""Reward models: a scalar head injected into any openseason decoder, Bradley-Terry on pairs.

    add_reward_head(model)      model.reward_head = Linear(n_embd, 1), trainable under every method
    reward_scores(model, input_ids, lengths) -> [R]  the head on the last real token's hidden state
    load_reward_model(CKPT)     a full or PEFT reward checkpoint, head included

The head is composition, not a model subclass: the GPT is built and adapted as usual (full, LoRA,
adapter, adapter-v2), then the head is attached as a submodule that declares all its parameters
trainable (`peft_all`), so it is saved with the run's weights (full: model.safetensors; PEFT:
peft_weights.safetensors) and run_card.json says "reward_head": true.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from . import losses


class RewardHead(nn.Linear):
    peft_all = True  # every parameter below this module trains, whatever the method

    def __init__(self, n_embd: int):
        super().__init__(n_embd, 1, bias=True)
        nn.init.normal_(self.weight, std=1 / math.sqrt(n_embd + 1))
        nn.init.zeros_(self.bias)


def add_reward_head(model: nn.Module) -> nn.Module:
    from ...peft.base import mark_trainable

    if getattr(model, "reward_head", None) is None:
        ref = model.lm_head.weight
        model.reward_head = RewardHead(model.config.n_embd).to(device=ref.device)
    if getattr(model, "peft_methods", None):
        mark_trainable(model)
    model.reward_head.float()
    return model


def reward_scores(model, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The head on the hidden state of each row's last real token (rows are right-padded)."""
    hidden = model.hidden_states(input_ids)
    last = hidden[torch.arange(input_ids.size(0), device=input_ids.device), (lengths - 1).clamp(min=0)]
    return model.reward_head(last.to(model.reward_head.weight.dtype)).squeeze(-1)


class RewardObjective:
    """Bradley-Terry: -logsigmoid(r_chosen - r_rejected - margin), summed over pairs."""

    name = "reward"
    weights = {"pairs": 1.0}
    metric_fields = {"reward_acc": "pairs", "reward_margin": "pairs"}

    def __init__(self, margin: float = 0.0):
        self.margin = float(margin or 0.0)

    def counts(self, batch: dict) -> dict[str, int]:
        return {"pairs": int(batch["pairs"])}

    def loss(self, model, batch: dict):
        B = int(batch["pairs"])
        lengths = batch["lengths"] if "lengths" in batch else (batch["labels"] != -100).cumsum(1).argmax(1) + 1
        scores = reward_scores(model, batch["input_ids"][:2 * B], lengths[:2 * B])
        c, r = scores[:B], scores[B:2 * B]
        margin = torch.full_like(c, self.margin) if self.margin else None
        per_pair = losses.bradley_terry_loss(c, r, margin)
        return {"pairs": per_pair.sum()}, {"reward_acc": float((c > r).float().sum()),
                                           "reward_margin": float((c - r).detach().sum())}


def load_reward_model(checkpoint, device="cpu") -> nn.Module:
    """A reward checkpoint written by `finetune(..., objective="reward")`, full or PEFT."""
    from ...checkpoint import read_run_card
    from ...checkpoint.full import build_model, load_config, load_full_model, load_state
    from ...checkpoint.peft import is_peft_checkpoint, load_peft_state, read_peft_config, verified_chain
    from ...errors import CheckpointError
    from ...peft import apply

    checkpoint = Path(checkpoint)
    if not read_run_card(checkpoint).get("reward_head"):
        raise CheckpointError("not a reward model (run_card.json has no \"reward_head\": true)", where=str(checkpoint),
                              hint="train one with `openseason finetune CKPT --data PAIRS --objective reward`")
    if is_peft_checkpoint(checkpoint):
        chain = verified_chain(checkpoint)
        model = load_full_model(chain[-1], device=device)
        for level in reversed(chain[:-1]):
            for entry in read_peft_config(level).get("methods", []):
                apply(model, entry["method"], **entry.get("options", {}))
            if level == chain[0]:
                add_reward_head(model)
            load_peft_state(model, level, device)
    else:
        model = build_model(load_config(checkpoint))  # on the meta device until the weights are assigned
        state = load_state(checkpoint, device)
        head = {k.split(".", 1)[1]: state.pop(k) for k in list(state) if k.startswith("reward_head.")}
        if not head:
            raise CheckpointError("the reward checkpoint holds no reward_head weights", where=str(checkpoint))
        model.load_state_dict(state, strict=False, assign=True)
        if model.config.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        model.init_rope(device=torch.device(device))
        add_reward_head(model)
        model.reward_head.load_state_dict(head)
    return model.to(device).eval()
