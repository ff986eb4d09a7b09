"""Memorization: a tiny model trained on chosen sequences reproduces them (score 1.0), unseen ones not."""
import torch

from openseason.config import Config
from openseason.evaluate.memorization import greedy_continuations, memorization_scores, plot_histogram
from openseason.model import GPT


def _train_to_memorize(sequences, steps=150):
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-neox", block_size=64, n_embd=96, n_head=4, intermediate_size=384))
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(sequences[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), sequences[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_memorized_sequences_score_one_and_unseen_do_not(tmp_path):
    gen = torch.Generator().manual_seed(1)
    seen = torch.randint(0, 512, (6, 64), generator=gen)
    unseen = torch.randint(0, 512, (6, 64), generator=gen)
    model = _train_to_memorize(seen)
    result = memorization_scores(model, torch.cat([seen, unseen]), batch_size=4)
    assert result.scores[:6].tolist() == [1.0] * 6
    assert (result.scores[6:] < 0.5).all()
    assert result.memorized.tolist() == list(range(6))
    summary = result.summary()
    assert summary["memorized"] == 6 and summary["sequences"] == 12
    assert plot_histogram(result.scores, tmp_path / "h.png").stat().st_size > 0


def test_greedy_continuation_matches_step_by_step_argmax():
    model = GPT(Config.from_name("tiny-llama"))
    model.init_weights()
    model.eval()
    prompts = torch.randint(0, 512, (3, 8))
    fast = greedy_continuations(model, prompts, 5)
    seq = prompts.clone()
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, seq[:, 8:])
