"""ROUGE-L that matches Google's `rouge_score` exactly, and a fast, exact ROUGE-L novelty filter.

`rouge_l(a, b)` equals `RougeScorer(['rougeL']).score(a, b)['rougeL'].fmeasure` (default tokenizer,
no stemmer) bit for bit: same tokens (lowercase, every run of characters outside [a-z0-9] becomes a
separator), same LCS, and the F-measure computed with the same float operations in the same order.
`tokenizer="unicode"` keeps letters of every script (rouge_score drops them, so two Russian or Chinese
near-duplicates score 0 and are never caught).

`NoveltyFilter` is the Self-Instruct novelty step: an instruction is rejected when its ROUGE-L against
any instruction already in the pool is strictly greater than the threshold (0.7 in the paper, whose
code compares with `>`); accepted ones join the pool. Decisions and scores are exact; speed comes from
never computing an LCS that cannot matter:

1. an inverted index from token id to the pool entries holding it (with counts), so the token
   multiset overlap with every pool entry is a few numpy additions;
2. the bound LCS <= overlap <= min(m, n), hence F = 2*LCS/(m+n) <= 2*overlap/(m+n);
3. candidates are visited in decreasing order of that bound and the search stops as soon as the
   bound cannot beat the best exact score found (branch and bound), so `max_score` is the exact
   maximum whether the instruction is accepted or rejected;
4. the LCS itself is the Allison-Dix / Hyyro bit-vector algorithm with Python integers as bit sets:
   one add, one subtract and a few logical operations per token of the shorter side.
"""
from __future__ import annotations

import heapq
import re
import unicodedata
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["tokenize", "default_tokenize", "unicode_tokenize", "lcs_length", "rouge_l",
           "rouge_l_tokens", "NoveltyFilter", "TOKENIZERS"]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID = re.compile(r"^[a-z0-9]+$")

# Scripts written without spaces: each character is a token (what ROUGE on CJK usually does).
_NO_SPACE_SCRIPTS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_UNICODE_TOKEN = re.compile(rf"[{_NO_SPACE_SCRIPTS}]|[^\W_{_NO_SPACE_SCRIPTS}]+")


def default_tokenize(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming, step for step (lower() first, as it does:
    'İ'.lower() is 'i' plus a combining dot, which then becomes a separator)."""
    text = _NON_ALNUM.sub(" ", text.lower())
    return [t for t in text.split(" ") if t and _VALID.match(t)]


def unicode_tokenize(text: str) -> list[str]:
    """Unicode-aware tokens: NFKC, casefold, runs of letters/digits of any script; CJK and kana
    characters one token each."""
    return _UNICODE_TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"default": default_tokenize, "unicode": unicode_tokenize}


def tokenize(text: str, tokenizer: str = "default") -> list[str]:
    try:
        return TOKENIZERS[tokenizer](text)
    except KeyError:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; choose one of {sorted(TOKENIZERS)}") from None


def _match_masks(seq: Sequence) -> dict:
    masks: dict = {}
    bit = 1
    for item in seq:
        masks[item] = masks.get(item, 0) | bit
        bit <<= 1
    return masks


def _lcs_with_masks(masks: dict, m: int, other: Iterable) -> int:
    # V holds a 1 for every row of the DP column that has not yet gained a match; carries from
    # V + U move the matches along. Bits above m only ever receive carries, so mask once at the end.
    v = (1 << m) - 1
    get = masks.get
    for item in other:
        u = v & get(item, 0)
        if u:
            v = (v + u) | (v - u)
    return m - (v & ((1 << m) - 1)).bit_count()


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel, exact)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    return _lcs_with_masks(_match_masks(a), len(a), b)


def _fmeasure(lcs: int, len_target: int, len_prediction: int) -> float:
    # The same operations in the same order as rouge_score._score_lcs + scoring.fmeasure, so the
    # float is identical; F is symmetric in IEEE arithmetic too (* and + commute exactly).
    if not len_target or not len_prediction:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l_tokens(target: Sequence, prediction: Sequence) -> float:
    """ROUGE-L F-measure of two already tokenized sequences."""
    return _fmeasure(lcs_length(target, prediction), len(target), len(prediction))


def rouge_l(a: str, b: str, tokenizer: str = "default") -> float:
    """ROUGE-L F-measure of two strings; with the default tokenizer equal to rouge_score's
    `RougeScorer(['rougeL']).score(a, b)['rougeL'].fmeasure`."""
    tok = TOKENIZERS.get(tokenizer) or (lambda t: tokenize(t, tokenizer))
    return rouge_l_tokens(tok(a), tok(b))


# Bounds are computed as 2*overlap/(m+n) while scores go through precision and recall; the two
# can differ in the last bits, so a bound only prunes when it is below the target by more than this.
_EPS = 1e-9


class _Postings:
    """Growable (pool index, count) arrays for one token id."""

    __slots__ = ("ids", "counts", "size")

    def __init__(self):
        self.ids = np.empty(8, dtype=np.int64)
        self.counts = np.empty(8, dtype=np.int32)
        self.size = 0

    def append(self, index: int, count: int) -> None:
        if self.size == len(self.ids):
            self.ids = np.concatenate([self.ids, np.empty_like(self.ids)])
            self.counts = np.concatenate([self.counts, np.empty_like(self.counts)])
        self.ids[self.size] = index
        self.counts[self.size] = count
        self.size += 1


class NoveltyFilter:
    """Keep an instruction only if its ROUGE-L to every pool instruction is <= `threshold`.

    `add(text) -> (accepted, max_score)`: `max_score` is always the exact maximum ROUGE-L against the
    pool before this instruction (0.0 for an empty pool or an instruction with no tokens), whether
    it was accepted or rejected. Accepted instructions join the pool, so an instruction accepted
    earlier in the same batch counts like any other. `most_similar(text, k)` returns the k pool
    instructions with the highest scores (exact, ties broken by pool order); `last_neighbors` holds
    them for the last `add` when the filter was built with `keep_neighbors=k`.
    """

    def __init__(self, threshold: float = 0.7, tokenizer: str = "default", keep_neighbors: int = 0):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {threshold}")
        self.threshold = float(threshold)
        self.tokenizer = tokenizer
        self._tok = TOKENIZERS.get(tokenizer) or (lambda t: tokenize(t, tokenizer))
        self.keep_neighbors = int(keep_neighbors)
        self.instructions: list[str] = []
        self._tokens: list[tuple[int, ...]] = []
        self._lengths = np.zeros(1024, dtype=np.int64)
        self._vocab: dict[str, int] = {}
        self._postings: dict[int, _Postings] = {}
        self.last_neighbors: list[tuple[str, float]] = []
        self.lcs_computed = 0  # how many exact LCS were needed (the rest were pruned by bounds)

    def __len__(self) -> int:
        return len(self.instructions)

    # -- pool ---------------------------------------------------------------------------------------
    def _ids(self, text: str, grow: bool) -> tuple[int, ...]:
        vocab = self._vocab
        if grow:
            return tuple(vocab.setdefault(t, len(vocab)) for t in self._tok(text))
        # Tokens never seen in the pool cannot match anything; -1 keeps the length right.
        return tuple(vocab.get(t, -1) for t in self._tok(text))

    def add_to_pool(self, instruction: str) -> None:
        """Put an instruction into the pool without checking it (seed tasks)."""
        ids = self._ids(instruction, grow=True)
        index = len(self.instructions)
        self.instructions.append(instruction)
        self._tokens.append(ids)
        if index == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[index] = len(ids)
        counts: dict[int, int] = {}
        for t in ids:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            post = self._postings.get(t)
            if post is None:
                post = self._postings[t] = _Postings()
            post.append(index, c)

    def extend(self, instructions: Iterable[str]) -> None:
        for text in instructions:
            self.add_to_pool(text)

    # -- scoring ------------------------------------------------------------------------------------
    def _bounds(self, ids: tuple[int, ...]):
        """Pool indices sharing a token with `ids` and their upper bounds 2*overlap/(m+n), unsorted."""
        counts: dict[int, int] = {}
        for t in ids:
            if t >= 0:
                counts[t] = counts.get(t, 0) + 1
        overlap = np.zeros(len(self.instructions), dtype=np.int64)
        for t, c in counts.items():
            post = self._postings.get(t)
            if post is None:
                continue
            k = post.size
            if c == 1:
                overlap[post.ids[:k]] += 1
            else:
                overlap[post.ids[:k]] += np.minimum(post.counts[:k], c)
        index = np.flatnonzero(overlap)
        return index, 2.0 * overlap[index] / (self._lengths[index] + len(ids))

    def _score(self, masks: dict, n: int, index: int) -> float:
        other = self._tokens[index]
        self.lcs_computed += 1
        return _fmeasure(_lcs_with_masks(masks, n, other), len(other), n)

    def _top(self, ids: tuple[int, ...], k: int) -> list[tuple[int, float]]:
        """Exact top-k (pool index, score) by branch and bound; k=1 gives the exact maximum.

        Sorting every candidate's bound would cost more than the LCS work it saves, so the best few
        bounds are scored first (argpartition), and only the candidates whose bound can still beat
        the k-th best score found are then sorted and visited.
        """
        n = len(ids)
        if not n or not self.instructions:
            return []
        index, bounds = self._bounds(ids)
        masks = _match_masks(ids)
        heap: list[tuple[float, int, int]] = []  # min-heap of the k best as (score, -index, index)

        def visit(order) -> None:
            for i, bound in zip(index[order].tolist(), bounds[order].tolist()):
                if len(heap) == k and bound < heap[0][0] - _EPS:
                    return  # visited in decreasing bound order: nothing after this can enter
                item = (self._score(masks, n, i), -i, i)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)

        first = max(16, 2 * k)
        if len(index) <= first:
            visit(np.argsort(-bounds, kind="stable"))
        else:
            head = np.argpartition(-bounds, first - 1)[:first]
            visit(head[np.argsort(-bounds[head], kind="stable")])
            rest = np.ones(len(index), dtype=bool)
            rest[head] = False
            if len(heap) == k:
                rest &= bounds >= heap[0][0] - _EPS
            rest = np.flatnonzero(rest)
            visit(rest[np.argsort(-bounds[rest], kind="stable")])
        return [(i, s) for s, _, i in sorted(heap, reverse=True)]

    def max_score(self, instruction: str) -> float:
        """Exact highest ROUGE-L of `instruction` against the pool (0.0 when nothing overlaps)."""
        top = self._top(self._ids(instruction, grow=False), 1)
        return top[0][1] if top else 0.0

    def most_similar(self, instruction: str, k: int = 10) -> list[tuple[str, float]]:
        """The k pool instructions most similar to `instruction`, best first, with exact scores
        (only instructions sharing at least one token; fewer than k if fewer do)."""
        return [(self.instructions[i], s) for i, s in self._top(self._ids(instruction, grow=False), k)]

    def check(self, instruction: str) -> tuple[bool, float]:
        """(would be accepted, exact max score) without changing the pool."""
        best = self.max_score(instruction)
        return best <= self.threshold, best

    def add(self, instruction: str) -> tuple[bool, float]:
        """Check `instruction` against the pool; if its max ROUGE-L is <= threshold, add it."""
        ids = self._ids(instruction, grow=False)
        k = max(1, self.keep_neighbors)
        top = self._top(ids, k)
        best = top[0][1] if top else 0.0
        if self.keep_neighbors:
            self.last_neighbors = [(self.instructions[i], s) for i, s in top]
        accepted = best <= self.threshold
        if accepted:
            self.add_to_pool(instruction)
        return accepted, best
