"""Training objectives of the one loop (`train.loop.train(..., objective=...)`); see base.py for the protocol.

    sft          SFTObjective           token cross-entropy (the default; pretraining too)
    reward       RewardObjective        Bradley-Terry on pairs, scalar head injected (reward.py)
    dpo family   PreferenceObjective    dpo, cdpo, ipo, kto, orpo, simpo (preference.py)
    grpo, rloo   GRPOObjective          online RL with rollouts from the inference engine (grpo.py)
    distill      DistillObjective       distilling step by step: label and rationale task means (distill.py)
"""
from .base import Objective, combine
from .sft import SFTObjective, count_targets, token_loss_sum

__all__ = ["Objective", "combine", "SFTObjective", "count_targets", "token_loss_sum"]
