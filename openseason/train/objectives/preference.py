"""The DPO family as objectives of the one loop: dpo, cdpo, ipo, kto (from pairs), orpo, simpo.

A micro-batch comes from `train.data.PairBatches`: 2B rows (B chosen, then B rejected; KTO adds B
rows of each prompt with another pair's chosen completion, for its KL estimate), labels -100 off the
completions, and "ref_logps" [rows] with the reference model's sequence log-probabilities (computed
once before training, see train/reference.py). Sequence log-probabilities sum over completion
tokens only. Losses are summed over pairs; the loop divides by the pairs of the whole step.

sft_weight (dpo, cdpo, ipo) adds sft_weight x the NLL of the chosen completions, a mean over the chosen
completion tokens of the step (as ORPO's NLL term): RPO (Pang et al. 2024, "Iterative Reasoning
Preference Optimization"), TRL's `loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight]`. It keeps
the chosen answers likely while the margin grows (plain DPO may lower both).
"""
from __future__ import annotations

import torch

from . import losses
from .logps import token_logps

PREFERENCE_OBJECTIVES = ("dpo", "cdpo", "ipo", "kto", "orpo", "simpo")
NEEDS_REFERENCE = ("dpo", "cdpo", "ipo", "kto")


SFT_TERM_OBJECTIVES = ("dpo", "cdpo", "ipo")


class PreferenceObjective:
    def __init__(self, kind: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0, sft_weight: float = 0.0):
        if kind not in PREFERENCE_OBJECTIVES:
            raise ValueError(f"unknown preference objective {kind!r}")
        if sft_weight and kind not in SFT_TERM_OBJECTIVES:
            raise ValueError(f"sft_weight applies to {', '.join(SFT_TERM_OBJECTIVES)}, not {kind}")
        self.sft_weight = float(sft_weight)
        self.weights = {"pairs": 1.0, "tokens": self.sft_weight if kind in SFT_TERM_OBJECTIVES else 1.0}
        self.name, self.kind, self.beta = kind, kind, float(beta)
        self.label_smoothing, self.gamma = float(label_smoothing), float(gamma)
        self.desirable_weight, self.undesirable_weight = float(desirable_weight), float(undesirable_weight)
        self.needs_reference = kind in NEEDS_REFERENCE
        self.metric_fields = {"reward_acc": "pairs", "reward_margin": "pairs", "reward_chosen": "pairs",
                              "reward_rejected": "pairs"}
        if kind == "kto":
            self.metric_fields["kl"] = "pairs"
        if kind == "orpo":
            self.metric_fields["log_odds"] = "pairs"

    def counts(self, batch: dict) -> dict[str, int]:
        out = {"pairs": int(batch["pairs"])}
        if self.kind == "orpo" or self.sft_weight:  # the NLL term: a mean over chosen completion tokens of the step
            B = int(batch["pairs"])
            out["tokens"] = int((batch["labels"][:B, 1:] != -100).sum())
        return out

    def loss(self, model, batch: dict):
        B = int(batch["pairs"])
        per_token, keep = token_logps(model, batch)
        sums, lens = per_token.sum(1), keep.sum(1)
        c, r = sums[:B], sums[B:2 * B]
        ref = batch.get("ref_logps")
        if self.needs_reference and ref is None:
            raise ValueError(f"{self.kind} needs the reference log-probabilities in the batch (ref_logps)")
        if ref is not None:
            ref = ref.to(sums.dtype)
        terms: dict[str, torch.Tensor] = {}
        extra: dict[str, float] = {}
        if self.kind in ("dpo", "cdpo"):
            per_pair, rc, rr = losses.dpo_loss(c, r, ref[:B], ref[B:2 * B], self.beta, self.label_smoothing)
        elif self.kind == "ipo":
            per_pair, rc, rr = losses.ipo_loss(c, r, ref[:B], ref[B:2 * B], lens[:B], lens[B:2 * B], self.beta)
        elif self.kind == "kto":
            per_ex, rc, rr, kl = losses.kto_loss(c, r, ref[:B], ref[B:2 * B], sums[2 * B:].detach(),
                                                 ref[2 * B:], self.beta, self.desirable_weight,
                                                 self.undesirable_weight)
            # TRL averages over the 2B examples of the batch; per pair that is the pair's two losses / 2
            per_pair = (per_ex[:B] + per_ex[B:]) / 2
            extra["kl"] = float(kl) * B
        elif self.kind == "orpo":
            avg_c, avg_r = c / lens[:B].clamp(min=1), r / lens[B:2 * B].clamp(min=1)
            term, log_odds = losses.orpo_odds_term(avg_c, avg_r, self.beta)
            per_pair = -term
            terms["tokens"] = -c.sum()  # NLL of the chosen completions
            rc, rr = self.beta * avg_c.detach(), self.beta * avg_r.detach()
            extra["log_odds"] = float(log_odds.detach().sum())
        else:  # simpo
            avg_c, avg_r = c / lens[:B].clamp(min=1), r / lens[B:2 * B].clamp(min=1)
            per_pair, rc, rr = losses.simpo_loss(avg_c, avg_r, self.beta, self.gamma, self.label_smoothing)
        if self.sft_weight:
            terms["tokens"] = -c.sum()  # NLL of the chosen completions, weighted by sft_weight (RPO)
        terms["pairs"] = per_pair.sum()
        metrics = {"reward_acc": float((rc > rr).float().sum()), "reward_margin": float((rc - rr).sum()),
                   "reward_chosen": float(rc.sum()), "reward_rejected": float(rr.sum()), **extra}
        return terms, metrics
