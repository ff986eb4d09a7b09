"""Task metrics against their references: sacreBLEU for BLEU, rouge_score for ROUGE-L."""
import random

import pytest

from openseason.evaluate.metrics import corpus_bleu, exact_match, task_metrics, tokenize_13a

sacrebleu = pytest.importorskip("sacrebleu")

WORDS = ('the cat sat on a mat . dog 3.5 1,000 - runs quickly ( quote ) "hi" & fish &amp; x-y 12-3 '
         'Ünï Zürich naïve , ; : ! ?').split()


def _random_text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def test_corpus_bleu_equals_sacrebleu_on_random_corpora():
    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(1, 6)
        hyps = [_random_text(rng, 0, 14) for _ in range(n)]
        refs1 = [_random_text(rng, 1, 14) for _ in range(n)]
        refs2 = [_random_text(rng, 1, 14) for _ in range(n)]
        ours = corpus_bleu(hyps, list(zip(refs1, refs2)))["bleu"]
        assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs1, refs2]).score, abs=1e-9)


def test_corpus_bleu_on_real_instructions(shared_data):
    import json

    rows = [json.loads(line) for line in (shared_data / "self-instruct" / "seed_tasks.jsonl").open()][:60]
    hyps = [r["instruction"] for r in rows]
    refs = [r["instances"][0]["output"] + " " + r["instruction"][: len(r["instruction"]) // 2] for r in rows]
    assert corpus_bleu(hyps, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert tokenize_13a("It costs $3.50, ok?") == sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(
        "It costs $3.50, ok?").split()


def test_exact_match_normalizes():
    assert exact_match("The answer is: Paris.", "answer is paris") == 1.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0
    assert exact_match("Paris", "Lyon") == 0.0


def test_task_metrics_rouge_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    preds = ["the cat sat on the mat", "a quick brown fox", "nothing in common"]
    refs = ["the cat is on the mat", "the quick brown dog", "zebra"]
    result = task_metrics(preds, refs)
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / 3
    assert result["rouge_l"] == pytest.approx(expected)
    assert result["exact_match"] == 0.0
    assert result["n"] == 3
