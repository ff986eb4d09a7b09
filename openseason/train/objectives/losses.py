"""The preference and policy-gradient losses as pure functions of log-probabilities (per pair or token).

Each returns per-example losses (the objective sums them; the loop divides by the step's pairs or
tokens). They are checked against TRL's implementations in tests/train/test_objectives_parity.py:

    dpo      -logsigmoid(beta * d) * (1 - eps) - logsigmoid(-beta * d) * eps       d = chosen - rejected
             log-ratio vs the reference; eps = label smoothing (eps > 0 is conservative DPO, "cdpo")
    ipo      (d_avg - 1 / (2 beta))^2 with per-token average log-ratios (as TRL, confirmed by IPO's authors)
    kto      w_d * (1 - sigmoid(beta * (r_c - z))), w_u * (1 - sigmoid(beta * (z - r_r)))   z = KL estimate
    orpo     NLL(chosen) - beta * logsigmoid(log odds(chosen) - log odds(rejected)), average log-probs
    simpo    -logsigmoid(beta * (avg_c - avg_r) - gamma) (with label smoothing), no reference
    bt       -logsigmoid(r_c - r_r - margin)                                         reward models
    grpo     -min(rho A, clip(rho, 1-eps_lo, 1+eps_hi) A) + beta * (exp(ref - logp) - (ref - logp) - 1)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float,
             label_smoothing: float = 0.0):
    """(losses, chosen_rewards, rejected_rewards); rewards = beta * log-ratio (detached)."""
    chosen_lr = chosen_logps - ref_chosen_logps
    rejected_lr = rejected_logps - ref_rejected_logps
    d = beta * (chosen_lr - rejected_lr)
    losses = -F.logsigmoid(d) * (1 - label_smoothing) - F.logsigmoid(-d) * label_smoothing
    return losses, beta * chosen_lr.detach(), beta * rejected_lr.detach()


def ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_len, rejected_len,
             beta: float):
    chosen_lr = chosen_logps - ref_chosen_logps
    rejected_lr = rejected_logps - ref_rejected_logps
    d = chosen_lr / chosen_len.clamp(min=1) - rejected_lr / rejected_len.clamp(min=1)
    return (d - 1 / (2 * beta)) ** 2, beta * chosen_lr.detach(), beta * rejected_lr.detach()


def kto_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, kl_logps, ref_kl_logps,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """(losses [chosen..., rejected...], chosen_rewards, rejected_rewards, kl). The KL estimate z is the
    batch mean of mismatched (prompt, other completion) log-ratios, clamped at 0 and detached."""
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    chosen_lr = chosen_logps - ref_chosen_logps
    rejected_lr = rejected_logps - ref_rejected_logps
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_lr - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_lr))
    losses = torch.cat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses])
    return losses, beta * chosen_lr.detach(), beta * rejected_lr.detach(), kl


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_term(chosen_avg_logps, rejected_avg_logps, beta: float):
    """(beta * logsigmoid(log odds ratio) per pair, log odds ratio); the ORPO loss is NLL - mean(term)."""
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (log1mexp(chosen_avg_logps) - log1mexp(rejected_avg_logps))
    return beta * F.logsigmoid(log_odds), log_odds


def simpo_loss(chosen_avg_logps, rejected_avg_logps, beta: float, gamma: float, label_smoothing: float = 0.0):
    """SimPO: beta * (avg_c - avg_r) - gamma, i.e. TRL's beta * (logits - gamma / beta)."""
    logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach()


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None):
    """-logsigmoid(r_chosen - r_rejected - margin) per pair (TRL RewardTrainer, InstructGPT)."""
    d = chosen_rewards - rejected_rewards
    if margin is not None:
        d = d - margin
    return -F.logsigmoid(d)


def grpo_token_loss(logps, old_logps, advantages, ref_logps=None, beta: float = 0.0, epsilon_low: float = 0.2,
                    epsilon_high: float = 0.2):
    """(per-token loss [N, T], per-token KL or None): clipped importance-weighted advantage (token level)
    plus beta times the k3 estimate of KL(policy || reference)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    kl = None
    if beta != 0.0:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        loss = loss + beta * kl
    return loss, kl


def group_advantages(rewards: torch.Tensor, group_size: int, baseline: str = "grpo", scale: bool = True):
    """Group-relative advantages of rewards laid out group-major ([g0c0, g0c1, ..., g1c0, ...]).

    grpo: (r - group mean) / (group std + 1e-4) (std unbiased, as TRL; scale=False leaves it out, Dr. GRPO)
    rloo: r - mean of the OTHER completions of the group (leave-one-out baseline)."""
    r = rewards.view(-1, group_size)
    if baseline == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs at least 2 completions per prompt")
        adv = r - (r.sum(1, keepdim=True) - r) / (group_size - 1)
    else:
        adv = r - r.mean(1, keepdim=True)
        if scale:
            adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)
