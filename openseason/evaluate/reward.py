"""`openseason evaluate reward CKPT --data PAIRS`: a reward model's pair accuracy on preference pairs.

Accuracy = share of pairs whose chosen completion scores higher than the rejected one, with a 95%
Wilson interval; the pairs are tokenized exactly as in training (`data.preferences`), in the
checkpoint's prompt style unless one is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


@torch.no_grad()
def evaluate_reward(checkpoint, data, *, style: Optional[str] = None, batch_size: int = 16, device="cpu",
                    max_length: Optional[int] = None, limit: Optional[int] = None) -> dict:
    from ..checkpoint import read_run_card
    from ..data.preferences import PreferenceData, collate_pairs, load_preferences
    from ..data.sft import prepared_style
    from ..tokenizer import Tokenizer
    from ..train.objective_run import wilson
    from ..train.objectives.reward import load_reward_model, reward_scores

    model = load_reward_model(checkpoint, device=device)
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    card_style = read_run_card(checkpoint).get("prompt_style")
    style = style or (card_style.get("name") if isinstance(card_style, dict) else card_style) or \
        prepared_style(data) or "plain"
    records = load_preferences(data)[:limit] if limit else load_preferences(data)
    pairs = PreferenceData(records, tokenizer, style, int(max_length or model.config.block_size))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    correct, margins = 0, []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.examples[start:start + batch_size]
        batch = collate_pairs(chunk, pad)
        lengths = (batch["labels"] != -100).cumsum(1).argmax(1) + 1
        scores = reward_scores(model, batch["input_ids"].to(device), lengths.to(device)).float().cpu()
        c, r = scores[:len(chunk)], scores[len(chunk):]
        correct += int((c > r).sum())
        margins += (c - r).tolist()
    n = len(pairs)
    return {"checkpoint": str(Path(checkpoint)), "pairs": n, "accuracy": correct / n if n else None,
            "ci95": wilson(correct, n), "mean_margin": sum(margins) / n if n else None,
            "tokenization": pairs.report, "prompt_style": style}
