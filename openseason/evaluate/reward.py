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
                    max_length: Optional[int] = None, limit: Optional[int] = None, per_pair: bool = False) -> dict:
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
    out = {"checkpoint": str(Path(checkpoint)), "pairs": n, "accuracy": correct / n if n else None,
           "ci95": wilson(correct, n), "mean_margin": sum(margins) / n if n else None,
           "tokenization": pairs.report, "prompt_style": style}
    if per_pair:  # margin > 0: the chosen reply scored higher
        out["per_pair"] = [{"id": ex["id"], "margin": m} for ex, m in zip(pairs.examples, margins)]
    return out


def best_of_n(llm, prompt, n: int, reward, *, seed: Optional[int] = None, temperature: float = 1.0, **sampling) -> dict:
    """Sample n completions of `prompt` through the one inference path and keep the best by reward.

    llm        a generation.LLM (its engine draws choice i with seed + i, so n = 1 is plain sampling)
    reward     a reward model (anything with score_ids(rows), e.g. grpo.RewardModelFunction: it scores
               prompt ids + completion ids, the stop/EOS token included as in training) or a reward
               function fn(prompts, completions, **_) -> scores (as GRPO's --reward module:function)
    Returns {"best": index, "text", "score", "choices": [{"text", "score", "finish_reason"}, ...]};
    ties go to the earliest choice.
    """
    from ..errors import ConfigError
    from ..generation import SamplingParams

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"best-of-n needs n >= 1, got {n!r}")
    if n > 1 and not temperature:
        raise ConfigError("best-of-n with n > 1 needs sampling (temperature > 0): greedy gives n equal completions",
                          hint="pass --temperature 0.8 (or any value > 0)")
    params = SamplingParams(n=n, temperature=temperature, seed=seed, **sampling)
    out = llm.complete(prompt, params)
    completions = out if isinstance(out, list) else [out]
    if hasattr(reward, "score_ids"):
        scores = reward.score_ids([list(c.prompt_ids) + list(c.token_ids) for c in completions])
    else:
        text = prompt if isinstance(prompt, str) else llm.tokenizer.decode(completions[0].prompt_ids)
        scores = reward([text] * len(completions), [c.text for c in completions])
    if len(scores) != len(completions):
        raise ConfigError(f"the reward returned {len(scores)} scores for {len(completions)} completions")
    scores = [float(s) for s in scores]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return {"best": best, "text": completions[best].text, "score": scores[best],
            "choices": [{"text": c.text, "score": s, "finish_reason": c.finish_reason}
                        for c, s in zip(completions, scores)]}


def load_best_of_n_reward(spec: str, llm, device="cpu"):
    """--reward for best-of-n: a reward checkpoint (its tokenizer must be the generator's, since it
    scores the generator's token ids) or module:function."""
    from ..errors import ConfigError
    from ..tokenizer import Tokenizer
    from ..train.objectives.grpo import load_reward_function

    reward = load_reward_function(spec, device=device)
    if hasattr(reward, "score_ids"):
        theirs = Tokenizer.from_dir(spec, reward.model.config).backend.to_str()
        if theirs != llm.tokenizer.backend.to_str():
            raise ConfigError("the reward model's tokenizer is not the generator's: it cannot score these token ids",
                              where=spec, hint="train the reward model from the same base (or the same tokenizer)")
    return reward
