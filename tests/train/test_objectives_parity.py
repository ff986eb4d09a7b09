"""Parity of every preference / policy loss with TRL's own code on the same log-probabilities (float64).

TRL 1.16 computes DPO/IPO and KTO inside the trainers' `_compute_loss`; those methods are called
unbound on a stand-in `self` and a stand-in model that returns the given per-token log-probabilities,
so the very lines of TRL run. ORPO's `odds_ratio_loss` and CPO's `cpo_loss` (SimPO, and the
label-smoothed sigmoid that is cDPO on log-ratios) are called the same way.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from openseason.train.objectives import losses  # noqa: E402

TOL = 1e-6


class _Acc:
    device = torch.device("cpu")
    num_processes = 1

    def gather_for_metrics(self, x):
        return x

    gather = gather_for_metrics

    def reduce(self, x, reduction="mean"):
        return x

    def autocast(self):
        import contextlib
        return contextlib.nullcontext()

    def unwrap_model(self, m):
        return m


def _stub_self(**kw):
    base = dict(accelerator=_Acc(), model=SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None,
                precompute_ref_logps=True, f_divergence_type="reverse_kl", use_weighting=False, label_smoothing=0.0,
                _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    base.update(kw)
    return SimpleNamespace(**base)


def _logp_setup(B=5, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = 2 * B
    completion = torch.zeros(rows, T, dtype=torch.long)
    for r in range(rows):
        start = int(torch.randint(1, 4, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        completion[r, start:end] = 1
    per_token = -torch.rand(rows, T - 1, generator=g, dtype=torch.float64) * 2 * completion[:, 1:]
    ref = -torch.rand(rows, generator=g, dtype=torch.float64) * 6
    return per_token, completion, ref


def _trl_dpo(loss_type, per_token, completion, ref, beta, label_smoothing=0.0):
    from trl.trainer.dpo_trainer import DPOTrainer

    rows, T = completion.shape
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    model = lambda **kw: outputs  # noqa: E731
    B = rows // 2
    inputs = {"input_ids": torch.ones(rows, T, dtype=torch.long), "attention_mask": torch.ones(rows, T),
              "completion_mask": completion, "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    self = _stub_self(loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing)
    return DPOTrainer._compute_loss(self, model, inputs, False)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(beta):
    per_token, completion, ref = _logp_setup()
    B = completion.size(0) // 2
    sums = per_token.sum(1)
    ours, _, _ = losses.dpo_loss(sums[:B], sums[B:], ref[:B], ref[B:], beta)
    theirs = _trl_dpo("sigmoid", per_token, completion, ref, beta)
    assert abs(float(ours.mean()) - float(theirs)) < TOL


def test_ipo_matches_trl():
    per_token, completion, ref = _logp_setup(seed=1)
    B = completion.size(0) // 2
    sums, lens = per_token.sum(1), completion.sum(1)
    ours, _, _ = losses.ipo_loss(sums[:B], sums[B:], ref[:B], ref[B:], lens[:B], lens[B:], 0.2)
    theirs = _trl_dpo("ipo", per_token, completion, ref, 0.2)
    assert abs(float(ours.mean()) - float(theirs)) < TOL


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    """cDPO is the label-smoothed sigmoid loss on the DPO log-ratios: TRL's cpo_loss computes exactly that
    form from its two inputs, so it is given the log-ratios (and the robust DPO loss is checked too)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    g = torch.Generator().manual_seed(2)
    c, r, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    ours, _, _ = losses.dpo_loss(c, r, rc, rr, 0.3, label_smoothing=0.15)
    self = _stub_self(alpha=0.0, loss_type="sigmoid", beta=0.3, label_smoothing=0.15)
    theirs, _, _ = CPOTrainer.cpo_loss(self, c - rc, r - rr)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_simpo_matches_trl():
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    g = torch.Generator().manual_seed(3)
    avg_c, avg_r = (-torch.rand(7, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    for ls in (0.0, 0.1):
        ours, _, _ = losses.simpo_loss(avg_c, avg_r, 2.0, 0.5, ls)
        self = _stub_self(alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=ls)
        theirs, _, _ = CPOTrainer.cpo_loss(self, avg_c, avg_r)
        assert torch.allclose(ours, theirs, atol=TOL, rtol=0)


def test_orpo_matches_trl():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    g = torch.Generator().manual_seed(4)
    avg_c, avg_r = (-torch.rand(7, generator=g, dtype=torch.float64) * 3 - 1e-3 for _ in range(2))
    term, _ = losses.orpo_odds_term(avg_c, avg_r, 0.1)
    theirs, *_ = ORPOTrainer.odds_ratio_loss(_stub_self(beta=0.1), avg_c, avg_r)
    # TRL casts to float32 first (`.float()`), so this one agrees to float32 precision
    assert torch.allclose(term, theirs.double(), atol=TOL, rtol=0)


def test_kto_matches_trl():
    from trl.trainer.kto_trainer import KTOTrainer

    g = torch.Generator().manual_seed(5)
    B, T = 4, 7
    # TRL's KTO batch: 2B unpaired examples; the first B desirable (our chosen), the last B undesirable
    per_token = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64)
    kl_logps = -torch.rand(2 * B, generator=g, dtype=torch.float64) * 3
    ref, ref_kl = (-torch.rand(2 * B, generator=g, dtype=torch.float64) * 6 for _ in range(2))
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    self = _stub_self(calculate_KL=True, loss_type="kto", beta=0.1, desirable_weight=1.3, undesirable_weight=0.7,
                      _compute_kl_logps=lambda model, batch: kl_logps)
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
              "completion_mask": torch.ones(2 * B, T), "label": torch.tensor([True] * B + [False] * B),
              "ref_logps": ref, "ref_KL_logps": ref_kl}
    try:
        theirs = KTOTrainer._compute_loss(self, lambda **kw: outputs, inputs, False)
    except (AttributeError, KeyError) as exc:  # a stand-in attribute TRL's bookkeeping wants
        pytest.fail(f"TRL's KTO _compute_loss needs more of its trainer: {exc!r}")
    sums = per_token.sum(1)
    ours, *_ = losses.kto_loss(sums[:B], sums[B:], ref[:B], ref[B:], kl_logps, ref_kl, 0.1, 1.3, 0.7)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert abs(float(ours.mean()) - float(theirs)) < TOL


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_matches_trl(beta):
    from trl.trainer.grpo_trainer import GRPOTrainer

    g = torch.Generator().manual_seed(6)
    N, P, C = 6, 3, 5
    logps = -torch.rand(N, C, generator=g, dtype=torch.float64)
    old = logps + 0.1 * torch.randn(N, C, generator=g, dtype=torch.float64)
    ref = logps + 0.2 * torch.randn(N, C, generator=g, dtype=torch.float64)
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    mask = (torch.rand(N, C, generator=g) > 0.2).long()
    mask[:, 0] = 1
    args = SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
    self = _stub_self(_get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
                      top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
                      beta=beta, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.2, args=args, use_vllm=False,
                      current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                      use_adaptive_entropy=False, entropy_coef=0.0, _entropy_window_stats=[],
                      _last_world_entropy=None)
    inputs = {"prompt_ids": torch.ones(N, P, dtype=torch.long), "prompt_mask": torch.ones(N, P, dtype=torch.long),
              "completion_ids": torch.ones(N, C, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref}
    try:
        theirs = GRPOTrainer._compute_loss(self, None, inputs)
    except (AttributeError, KeyError) as exc:
        pytest.fail(f"TRL's GRPO _compute_loss needs more of its trainer: {exc!r}")
    per_token, _ = losses.grpo_token_loss(logps, old, adv, ref, beta, 0.2, 0.2)
    ours = (per_token * mask).sum() / mask.sum()
    assert abs(float(ours) - float(theirs)) < TOL


def test_bradley_terry_matches_trl_reward_loss():
    g = torch.Generator().manual_seed(7)
    c, r, m = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
    # TRL RewardTrainer: -logsigmoid(chosen - rejected - margin).mean()
    expected = -torch.nn.functional.logsigmoid(c - r - m).mean()
    assert abs(float(losses.bradley_terry_loss(c, r, m).mean()) - float(expected)) < TOL
