"""CIDEr-D (Vedantam et al., CVPR 2015): consensus between a caption and the reference captions.

For n = 1..4, every caption becomes a TF-IDF vector of its n-grams, where the document frequency of
an n-gram is the number of images whose references contain it, so n-grams common to all images
weigh little. The score of caption c for image i is

    CIDEr-D_n(c, S_i) = 10/m * sum_j  exp(-(l(c) - l(s_ij))^2 / (2 sigma^2)) * <min(g(c), g(s_ij)), g(s_ij)> / (|g(c)| |g(s_ij)|)

(clipped n-gram weights and a Gaussian length penalty, sigma = 6, against gaming by repetition), and
CIDEr-D is the mean over n. The corpus score is the mean over images. Captions are lowercased and split on
whitespace after dropping punctuation (the COCO toolkit's PTB tokenizer is a Java program; our synthetic
captions need nothing more). tests/evaluate checks the numbers against pycocoevalcap's Cider.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

MAX_ORDER = 4
SIGMA = 6.0
_PUNCT = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def _counts(tokens: list[str]) -> Counter:
    grams: Counter = Counter()
    for n in range(1, MAX_ORDER + 1):
        for i in range(len(tokens) - n + 1):
            grams[tuple(tokens[i:i + n])] += 1
    return grams


def _vector(counts: Counter, df: Counter, log_images: float) -> tuple[list[dict], list[float]]:
    vec: list[dict] = [{} for _ in range(MAX_ORDER)]
    norms = [0.0] * MAX_ORDER
    for gram, tf in counts.items():
        n = len(gram) - 1
        weight = float(tf) * (log_images - math.log(max(1.0, df[gram])))
        vec[n][gram] = weight
        norms[n] += weight * weight
    return vec, [math.sqrt(x) for x in norms]


def cider_d(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """{"cider": corpus CIDEr-D, "scores": per-image CIDEr-D}; references[i] is one caption or a list."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    ref_counts = [[_counts(tokenize(r)) for r in rs] for rs in refs]
    df: Counter = Counter()
    for counts in ref_counts:
        for gram in set(g for c in counts for g in c):
            df[gram] += 1
    log_images = math.log(float(len(candidates))) if candidates else 0.0
    scores = []
    for cand, counts in zip(candidates, ref_counts):
        cand_tokens = tokenize(cand)
        vec_c, norm_c = _vector(_counts(cand_tokens), df, log_images)
        total = [0.0] * MAX_ORDER
        for ref_c in counts:
            vec_r, norm_r = _vector(ref_c, df, log_images)
            delta = len(cand_tokens) - sum(ref_c[g] for g in ref_c if len(g) == 1)
            for n in range(MAX_ORDER):
                dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_c[n].items())
                if norm_c[n] != 0 and norm_r[n] != 0:
                    dot /= norm_c[n] * norm_r[n]
                total[n] += dot * math.exp(-(delta ** 2) / (2 * SIGMA ** 2))
        mean = sum(total) / MAX_ORDER / max(1, len(counts)) * 10.0
        scores.append(mean)
    return {"cider": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
