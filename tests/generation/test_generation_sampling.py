"""Sampling: seeded reproducibility, top-k=1 is greedy, and the filters and the repetition penalty
agree with transformers' logits processors."""
from __future__ import annotations

import pytest
import torch

from openseason.generation.sampling import (SamplingParams, apply_repetition_penalty, filter_logits,
                                            sample_next_token)
from openseason.errors import OpenseasonError


def test_seeded_sampling_is_reproducible(llm):
    a = llm.generate("The quick brown fox", max_new_tokens=30, temperature=1.0, seed=7, ignore_eos=True)
    b = llm.generate("The quick brown fox", max_new_tokens=30, temperature=1.0, seed=7, ignore_eos=True)
    c = llm.generate("The quick brown fox", max_new_tokens=30, temperature=1.0, seed=8, ignore_eos=True)
    assert a == b
    assert a != c
    assert "".join(llm.stream("The quick brown fox", max_new_tokens=30, temperature=1.0, seed=7,
                              ignore_eos=True)) == a


def test_top_k_1_equals_greedy(llm):
    greedy = llm.complete("Below is an instruction", max_new_tokens=30, ignore_eos=True)
    top1 = llm.complete("Below is an instruction", max_new_tokens=30, temperature=1.3, top_k=1, seed=3,
                        ignore_eos=True)
    assert top1.token_ids == greedy.token_ids


def test_filters_match_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    for k in (1, 5, 50):
        ref = lp.TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(torch.isinf(filter_logits(logits.clone(), top_k=k)), torch.isinf(ref))
    for p in (0.1, 0.5, 0.9, 0.99):
        ref = lp.TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(filter_logits(logits.clone(), top_p=p)), torch.isinf(ref))
    for p in (0.01, 0.1, 0.5, 1.0):
        ref = lp.MinPLogitsWarper(min_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(filter_logits(logits.clone(), min_p=p)), torch.isinf(ref))
    # after top-k and top-p, as transformers' generate orders its warpers
    ref = lp.MinPLogitsWarper(min_p=0.2)(None, lp.TopPLogitsWarper(top_p=0.9)(None, lp.TopKLogitsWarper(top_k=20)(
        None, logits.clone())))
    assert torch.equal(torch.isinf(filter_logits(logits.clone(), top_k=20, top_p=0.9, min_p=0.2)), torch.isinf(ref))


def test_repetition_penalty_matches_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    ids = torch.tensor([[3, 7, 7, 20], [0, 1, 49, 3]])
    ref = lp.RepetitionPenaltyLogitsProcessor(penalty=1.3)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits.clone(), ids, 1.3), ref)
    mask = torch.zeros(2, 50, dtype=torch.bool).scatter_(1, ids, True)
    torch.testing.assert_close(apply_repetition_penalty(logits.clone(), mask, 1.3), ref)


def test_repetition_penalty_changes_greedy_output(llm):
    plain = llm.complete("The quick brown fox", max_new_tokens=30, ignore_eos=True)
    penalized = llm.complete("The quick brown fox", max_new_tokens=30, repetition_penalty=5.0, ignore_eos=True)
    assert penalized.token_ids != plain.token_ids
    # A strong penalty keeps greedy output from looping on one token.
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))


def test_sampling_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits, temperature=1.0, top_k=2, generator=gen)
    counts = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0].item() - 0.625) < 0.03          # 0.5 / (0.5 + 0.3)
    draws = sample_next_token(logits, temperature=1.0, top_p=0.7, generator=gen)
    assert set(draws.tolist()) == {0, 1}                 # 0.5 alone < 0.7, 0.5 + 0.3 reaches it
    assert torch.equal(sample_next_token(logits[:3], temperature=0), torch.zeros(3, dtype=torch.long))
    draws = sample_next_token(logits, temperature=1.0, min_p=0.35, generator=gen)
    assert set(draws.tolist()) == {0, 1}                 # 0.15 < 0.35 * 0.5 <= 0.3
    hot = sample_next_token(logits, temperature=2.0, min_p=0.35, generator=gen)
    assert set(hot.tolist()) == {0, 1, 2}                # after the temperature: 0.15 ** 0.5 >= 0.35 * 0.5 ** 0.5


def test_bad_sampling_parameters_are_clear():
    with pytest.raises(OpenseasonError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(OpenseasonError, match="top_p"):
        SamplingParams(top_p=0)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(OpenseasonError, match="min_p"):
            SamplingParams(min_p=bad)
    with pytest.raises(OpenseasonError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
