"""Task metrics on instruction sets: exact match, ROUGE-L and corpus BLEU.

ROUGE-L is the synth module's implementation (identical to Google's rouge_score). BLEU is corpus BLEU-4
with the brevity penalty, closest reference length, exponential smoothing of empty n-gram orders and
the 13a (mteval-v13a) tokenization, the defaults of sacreBLEU, so scores are comparable to papers.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, squeeze whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: str | Sequence[str], normalize: bool = True) -> float:
    refs = [references] if isinstance(references, str) else list(references)
    norm = normalize_answer if normalize else (lambda s: s.strip())
    return float(any(norm(prediction) == norm(r) for r in refs))


# -- BLEU ---------------------------------------------------------------------------------------------
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation becomes its own token
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),               # period/comma unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),               # ... or before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),                    # dash after a digit
]


def tokenize_13a(line: str) -> list[str]:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], max_order: int = 4) -> dict:
    """Corpus BLEU (0-100). references[i] is one reference string or a list of them for hypothesis i."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    correct = [0] * max_order
    totals = [0] * max_order
    sys_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        hyp_tokens = tokenize_13a(hyp)
        ref_tokens = [tokenize_13a(r) for r in refs]
        sys_len += len(hyp_tokens)
        # closest reference length; ties go to the shorter one
        ref_len += min((abs(len(r) - len(hyp_tokens)), len(r)) for r in ref_tokens)[1]
        max_ref: Counter = Counter()
        for r in ref_tokens:
            max_ref |= _ngrams(r, max_order)
        hyp_counts = _ngrams(hyp_tokens, max_order)
        for gram, count in hyp_counts.items():
            n = len(gram) - 1
            totals[n] += count
            correct[n] += min(count, max_ref.get(gram, 0))
    precisions = [0.0] * max_order
    smooth = 1.0
    for n in range(max_order):
        if totals[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * totals[n])
        else:
            precisions[n] = 100.0 * correct[n] / totals[n]
    if sys_len == 0 or not any(correct):  # no n-gram of any order matches: BLEU is 0, not smoothed
        score = 0.0
    else:
        bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
        logs = [math.log(p) if p > 0 else -9999999999 for p in precisions]
        score = bp * math.exp(sum(logs) / max_order)
    return {"bleu": score, "precisions": precisions, "sys_len": sys_len, "ref_len": ref_len}


def rouge_l(prediction: str, reference: str) -> float:
    from ..synth.rouge import rouge_l as _rouge_l

    return _rouge_l(prediction, reference)


def task_metrics(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                 metrics: Iterable[str] = ("exact_match", "rouge_l", "bleu")) -> dict:
    """Mean exact match and ROUGE-L (best over references), and corpus BLEU, over an instruction set."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out: dict = {"n": len(predictions)}
    metrics = set(metrics)
    ref_lists = [[r] if isinstance(r, str) else list(r) for r in references]
    if "exact_match" in metrics:
        out["exact_match"] = sum(exact_match(p, r) for p, r in zip(predictions, ref_lists)) / max(1, len(predictions))
    if "rouge_l" in metrics:
        out["rouge_l"] = sum(max(rouge_l(p, r) for r in refs) for p, refs in zip(predictions, ref_lists)) / max(
            1, len(predictions))
    if "bleu" in metrics:
        out["bleu"] = corpus_bleu(predictions, ref_lists)["bleu"]
    return out
