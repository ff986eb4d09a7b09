"""Online RL in the one loop: GRPO / RLOO with rollouts from the one inference engine.

`RolloutBatches` is the loop's data source: each micro-batch takes `prompts_per_batch` prompts (a
seeded, resumable order), generates `group_size` completions per prompt with
`generation.generate_ids` (SamplingParams with a seed derived from the run seed and the rollout
counter, so a resumed run draws exactly the same completions), scores them with the reward
(a Python function `module:function` or a reward-model checkpoint), and turns the scores into
group-relative advantages (GRPO: standardized within the group; RLOO: leave-one-out mean).

`GRPOObjective` is the clipped policy-gradient loss with a k3 KL penalty to the reference policy,
summed over completion tokens and normalized by the completion tokens of the whole step (TRL's
"bnpo"; with one optimizer step per rollout batch the importance ratio is 1, as TRL's default).

Reference policy: the policy as training started, without a second model in memory (kl_reference.py:
the adapter's starting values for PEFT methods, the starting checkpoint streamed from disk module by
module for full finetuning); its per-token log-probabilities of each rollout are computed once, when
the rollout is drawn, in a no-grad pass.

Reward functions follow TRL's convention: fn(prompts, completions, **columns) -> list[float], where
prompts are message lists, completions strings, and columns hold each record's "answer" (the last
assistant message of the prepared conversation, when there is one) and "meta".
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Callable

import torch

from ...errors import ConfigError
from . import losses
from .logps import token_logps


def exact_match_reward(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the completion (stripped) equals the reference answer, else 0.0."""
    answer = answer or [None] * len(completions)
    return [float(a is not None and c.strip() == str(a).strip()) for c, a in zip(completions, answer)]


def load_reward_function(spec: str, device="cpu") -> Callable:
    """`module:function` (imported) or a reward-model checkpoint directory (scored with its head)."""
    if Path(spec).is_dir():
        return RewardModelFunction(spec, device)
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"--reward {spec!r} is neither a checkpoint directory nor module:function",
                          hint="e.g. --reward openseason.train.objectives.grpo:exact_match_reward")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the reward function {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"{spec!r} is not callable")
    return fn


class RewardModelFunction:
    """A reward-model checkpoint as a reward function (it scores prompt + completion ids)."""

    def __init__(self, checkpoint, device="cpu"):
        from .reward import load_reward_model

        self.model = load_reward_model(checkpoint, device=device)
        self.device = device

    @torch.no_grad()
    def score_ids(self, rows: list[list[int]]) -> list[float]:
        from .reward import reward_scores

        T = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in rows])
        return [float(s) for s in reward_scores(self.model, ids.to(self.device), lengths.to(self.device))]


class RolloutBatches:
    def __init__(self, model, records: list[dict], prompt_ids: list[list[int]], tokenizer, reward: Callable, *,
                 group_size: int = 4, prompts_per_batch: int = 2, max_new_tokens: int = 16,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, baseline: str = "grpo",
                 reference=None, stop_ids=()):
        from ...data.sft import ShuffledSampler

        if group_size < 2:
            raise ConfigError("group-relative advantages need --num-generations of at least 2")
        self.model, self.records, self.prompt_ids, self.tokenizer = model, records, prompt_ids, tokenizer
        self.reward, self.group_size, self.prompts_per_batch = reward, group_size, prompts_per_batch
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed, self.baseline, self.reference, self.stop_ids = seed, baseline, reference, tuple(stop_ids)
        self.sampler = ShuffledSampler(len(records), seed=seed)
        self.draws = 0
        self.batches_per_epoch = max(1, math.ceil(len(records) / prompts_per_batch))
        self.last_rewards: list[float] = []

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.draws = int(state["draws"])

    def _score(self, indices, completions, texts) -> list[float]:
        if isinstance(self.reward, RewardModelFunction):
            return self.reward.score_ids([list(c.prompt_ids) + list(c.token_ids) for c in completions])
        prompts, answers, metas = [], [], []
        for i in indices:
            messages = self.records[i]["messages"]
            prompt = messages[:-1] if messages[-1]["role"] == "assistant" else messages
            answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
            for _ in range(self.group_size):
                prompts.append(prompt)
                answers.append(answer)
                metas.append(self.records[i].get("meta"))
        scores = self.reward(prompts, texts, answer=answers, meta=metas)
        if len(scores) != len(texts):
            raise ConfigError(f"the reward function returned {len(scores)} scores for {len(texts)} completions")
        return [float(s) for s in scores]

    @torch.no_grad()
    def next_batch(self) -> dict:
        from ...data.sft import IGNORE
        from ...generation import SamplingParams, generate_ids

        indices = [next(self.sampler) for _ in range(self.prompts_per_batch)]
        base_seed = (self.seed * 1_000_003 + self.draws * 10_007) % (2**63)
        self.draws += 1
        model = self.model
        was_training = model.training
        model.eval()
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                n=self.group_size, seed=base_seed, stop_token_ids=self.stop_ids)
        completions = []
        for j, i in enumerate(indices):  # one seed per prompt: seed + choice index within it
            p = dataclasses.replace(params, seed=base_seed + j * self.group_size)
            completions += generate_ids(model, [self.prompt_ids[i]], p, tokenizer=self.tokenizer)
        texts = [c.text for c in completions]
        rewards = torch.tensor(self._score(indices, completions, texts), dtype=torch.float32)
        self.last_rewards = rewards.tolist()
        advantages = losses.group_advantages(rewards, self.group_size, self.baseline)
        rows = [(list(c.prompt_ids), list(c.token_ids)) for c in completions]
        T = max(len(p) + len(c) for p, c in rows)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for r, (p, c) in enumerate(rows):
            input_ids[r, :len(p) + len(c)] = torch.tensor(p + c)
            if c:
                labels[r, len(p):len(p) + len(c)] = torch.tensor(c)
        batch = {"input_ids": input_ids, "labels": labels, "advantages": advantages, "rewards": rewards}
        if self.reference is not None:
            device = next(model.parameters()).device
            with self.reference.active(model):
                ref, _ = token_logps(model, {"input_ids": input_ids.to(device), "labels": labels.to(device)})
            batch["ref_token_logps"] = ref.cpu()
        model.train(was_training)
        return batch


class GRPOObjective:
    weights = {"tokens": 1.0}
    metric_fields = {"reward": "completions", "reward_std": "groups", "kl": "tokens", "completion_len": "completions"}

    def __init__(self, name: str = "grpo", beta: float = 0.04, epsilon: float = 0.2, group_size: int = 4):
        self.name, self.beta, self.epsilon, self.group_size = name, float(beta), float(epsilon), group_size

    def counts(self, batch: dict) -> dict[str, int]:
        n = int(batch["input_ids"].size(0))
        return {"tokens": int((batch["labels"][:, 1:] != -100).sum()), "completions": n,
                "groups": n // self.group_size}

    def loss(self, model, batch: dict):
        logps, keep = token_logps(model, batch)
        ref = batch.get("ref_token_logps")
        per_token, kl = losses.grpo_token_loss(logps, logps.detach(), batch["advantages"].to(logps.dtype),
                                               ref.to(logps.dtype) if ref is not None else None, self.beta,
                                               self.epsilon, self.epsilon)
        mask = keep.to(per_token.dtype)
        rewards = batch["rewards"].view(-1, self.group_size)
        metrics = {"reward": float(rewards.sum()), "reward_std": float(rewards.std(1).sum()),
                   "completion_len": float(keep.sum()),
                   "kl": float((kl.detach() * mask).sum()) if kl is not None else 0.0}
        return {"tokens": (per_token * mask).sum()}, metrics
