"""MinHash signatures and banded LSH, vectorized with numpy over many documents at once.

Shingles are word n-grams of the normalized text (NFKC, lower case, `\\w+` words; a document with
fewer than n words is one shingle). Each shingle gets a 32-bit hash, which is avalanched with the
MurmurHash3 finalizer and mapped through `num_perm` affine permutations h -> a*h + b (mod 2^32, a
odd): the same permutation family and parameters (numpy RandomState(seed)) as datasketch >= 2.0's
default "affine32" scheme. With `shingle_hash="sha1"` the shingle hash is also datasketch's
(first 4 bytes of SHA-1, little endian), so signatures are bit-identical to datasketch's; the
default `"fast"` hashes each distinct word once and combines word hashes into n-gram hashes with
numpy, which is many times faster and statistically equivalent.

LSH splits the first b*r signature values into b bands of r rows; two documents are candidates when
all r values of some band agree. (b, r) minimize the equally weighted false positive and false
negative probabilities at the threshold, as datasketch's MinHashLSH does.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
import unicodedata
from typing import Iterable, Optional, Sequence

import numpy as np

WORD = re.compile(r"\w+")
MASK32 = np.uint64(0xFFFFFFFF)
# MurmurHash3 fmix32 constants (public domain, Austin Appleby).
FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
SHINGLE_HASHES = ("fast", "sha1")


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what "the same text" means for dedup."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def words(text: str) -> list[str]:
    """The words of `text` after normalization (NFKC is a no-op on ASCII, so skip it there)."""
    if text.isascii():
        return WORD.findall(text.lower())
    return WORD.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, ngram: int = 5) -> list[bytes]:
    """The word n-gram shingles of `text` as UTF-8 bytes (what datasketch is fed in comparisons)."""
    w = words(text)
    if not w:
        return []
    if len(w) < ngram:
        return [" ".join(w).encode()]
    return [" ".join(w[i:i + ngram]).encode() for i in range(len(w) - ngram + 1)]


def sha1_hash32(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = FMIX
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays: odd multipliers and offsets, drawn like datasketch's affine32 scheme."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


class MinHasher:
    """Signatures of many texts at once: `signatures(texts) -> (uint32 [N, num_perm], has_shingles [N])`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, shingle_hash: str = "fast",
                 chunk_elements: int = 1 << 18):
        if shingle_hash not in SHINGLE_HASHES:
            raise ValueError(f"shingle_hash must be one of {SHINGLE_HASHES}")
        self.num_perm, self.seed, self.ngram, self.shingle_hash = num_perm, seed, ngram, shingle_hash
        self.a, self.b = permutations(num_perm, seed)
        self.chunk_shingles = max(1, chunk_elements // num_perm)
        # fast mode: one 64-bit hash per distinct word, n odd multipliers to combine a window
        self._vocab: dict[str, int] = {}
        self._word_hash = np.zeros(1024, dtype=np.uint64)
        self._mult = (np.random.RandomState(seed + 7919).randint(0, 1 << 62, ngram, dtype=np.uint64)
                      * np.uint64(2) + np.uint64(1))

    # -- shingle hashes -----------------------------------------------------------------------------
    def _word_ids(self, word_lists: list[list[str]]) -> np.ndarray:
        """Ids of all words of all documents, concatenated; new words get an id and a hash."""
        vocab = self._vocab
        new = set().union(*word_lists).difference(vocab)
        if new:
            first = len(vocab)
            need = first + len(new)
            if need > len(self._word_hash):
                grown = np.zeros(max(need, 2 * len(self._word_hash)), dtype=np.uint64)
                grown[:len(self._word_hash)] = self._word_hash
                self._word_hash = grown
            fresh = sorted(new)  # sorted: ids do not depend on set order
            vocab.update(zip(fresh, range(first, need)))
            digests = b"".join(hashlib.blake2b(w.encode(), digest_size=8).digest() for w in fresh)
            # | 1 keeps every word's hash away from the 0 that pads short documents
            self._word_hash[first:need] = np.frombuffer(digests, dtype="<u8") | np.uint64(1)
        total = sum(map(len, word_lists))
        return np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(word_lists)), dtype=np.int64,
                           count=total)

    def _fast_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(shingle hashes uint32 concatenated over texts, count per text)."""
        n = self.ngram
        word_lists = [words(t) for t in texts]
        all_ids = self._word_ids(word_lists)
        lens = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
        padded = np.where(lens == 0, 0, np.maximum(lens, n))
        total = int(padded.sum())
        flat = np.zeros(total + n, dtype=np.uint64)  # zero hash pads short docs and the tail
        starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int64)
        if total:
            pos = np.repeat(starts, lens) + (np.arange(len(all_ids)) - np.repeat(np.cumsum(lens) - lens, lens))
            flat[pos] = self._word_hash[all_ids]
        combined = np.zeros(total, dtype=np.uint64)
        for k in range(n):
            combined += flat[k:k + total] * self._mult[k]
        counts = np.where(padded == 0, 0, padded - n + 1)
        # keep windows that start inside their own document
        offs = np.arange(total) - np.repeat(starts, padded)
        valid = offs < np.repeat(counts, padded)
        h = combined[valid]
        h = ((h ^ (h >> np.uint64(32))) & MASK32).astype(np.uint32)
        return h, counts

    def _sha1_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [shingles(t, self.ngram) for t in texts]
        counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        digests = b"".join(hashlib.sha1(s).digest()[:4] for p in parts for s in p)
        return np.frombuffer(digests, dtype="<u4").astype(np.uint32), counts

    # -- signatures ---------------------------------------------------------------------------------
    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit shingle hashes of all texts concatenated, number of shingles per text)."""
        return (self._fast_hashes if self.shingle_hash == "fast" else self._sha1_hashes)(list(texts))

    def signatures_from_hashes(self, hv: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """MinHash signatures (uint32 [N, num_perm]) from concatenated shingle hashes; a text with no
        shingle gets all-max values (and should be left out of LSH)."""
        hv = np.asarray(hv, dtype=np.uint32)
        counts = np.asarray(counts, dtype=np.int64)
        out = np.full((len(counts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        self._reduce(fmix32(hv), counts, out)
        return out

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [N, num_perm], has_shingles bool [N]) of `texts`."""
        texts = list(texts)
        out = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        has = np.zeros(len(texts), dtype=bool)
        doc_batch = 4096  # bounds the memory of the concatenated shingle arrays
        for lo in range(0, len(texts), doc_batch):
            hv, counts = self.shingle_hashes(texts[lo:lo + doc_batch])
            has[lo:lo + len(counts)] = counts > 0
            out[lo:lo + len(counts)] = self.signatures_from_hashes(hv, counts)
        return out, has

    def _reduce(self, hv: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
        """out[d] = min over doc d's shingles of a*h + b, in cache-sized slices of whole documents,
        spread over threads (numpy releases the GIL inside its loops)."""
        ends = np.cumsum(counts)
        slices = []
        d, n_docs = 0, len(counts)
        while d < n_docs:
            start = int(ends[d] - counts[d])
            e = max(int(np.searchsorted(ends, start + self.chunk_shingles, side="right")), d + 1)
            slices.append((d, e))
            d = e

        def work(span):
            d, e = span
            start, stop = int(ends[d] - counts[d]), int(ends[e - 1])
            nonempty = np.arange(d, e)[counts[d:e] > 0]
            if len(nonempty):
                phv = hv[start:stop, None] * self.a[None, :]
                phv += self.b[None, :]
                out[nonempty] = np.minimum.reduceat(phv, (ends[nonempty] - counts[nonempty]) - start, axis=0)

        workers = min(len(slices), os.cpu_count() or 1)
        if workers <= 1:
            for span in slices:
                work(span)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, slices))


# -- LSH ---------------------------------------------------------------------------------------------
def _integrate(f, lo: float, hi: float, n: int = 2049) -> float:
    x = np.linspace(lo, hi, n)
    y = f(x)
    h = (hi - lo) / (n - 1)
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))  # Simpson


def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimizing weights[0]*P(false positive) + weights[1]*P(false negative)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be in (0, 1)")
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integrate(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = _integrate(lambda s: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
            err = weights[0] * fp + weights[1] * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _band_groups(sigs: np.ndarray, b: int, r: int, rows: np.ndarray) -> Iterable[np.ndarray]:
    """For each band, arrays of row indices (into `rows`) whose band values agree (groups of >= 2)."""
    for j in range(b):
        band = np.ascontiguousarray(sigs[rows, j * r:(j + 1) * r])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * r))).ravel()
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        if len(sk) < 2:
            continue
        change = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        bounds = np.concatenate([[0], change, [len(sk)]])
        sizes = np.diff(bounds)
        for g in np.flatnonzero(sizes > 1):
            yield rows[order[bounds[g]:bounds[g + 1]]]


def candidate_pairs(sigs: np.ndarray, b: int, r: int, mask: Optional[np.ndarray] = None) -> set[tuple[int, int]]:
    """Every pair (i < j) sharing at least one band bucket (what MinHashLSH queries return)."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(sigs))
    pairs: set[tuple[int, int]] = set()
    for group in _band_groups(sigs, b, r, rows):
        g = np.sort(group).tolist()
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                pairs.add((g[x], g[y]))
    return pairs


def clusters(sigs: np.ndarray, b: int, r: int, mask: Optional[np.ndarray] = None) -> list[list[int]]:
    """Connected components (size >= 2) of the candidate graph, each sorted, via union-find on star
    edges per bucket (the same components as all pairs, without the quadratic blow-up)."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(sigs))
    parent = np.arange(len(sigs))

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for group in _band_groups(sigs, b, r, rows):
        first = find(int(group.min()))
        for other in group.tolist():
            ro = find(other)
            if ro != first:
                lo, hi = min(ro, first), max(ro, first)
                parent[hi] = lo
                first = lo
    comps: dict[int, list[int]] = {}
    for i in rows.tolist():
        comps.setdefault(find(i), []).append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)
