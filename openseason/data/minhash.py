"""MinHash signatures and banded LSH, vectorized with numpy over many documents at once.

Shingles are word n-grams of the normalized text (NFKC, lower case, `\\w+` words, joined by one
space; a document with fewer than n words is one shingle). Each shingle gets a 32-bit hash, which
is avalanched with the MurmurHash3 finalizer and mapped through `num_perm` affine permutations
h -> a*h + b (mod 2^32, a odd): the same permutation family and parameters (numpy
RandomState(seed)) as datasketch >= 2.0's default "affine32" scheme.

Shingle hashes: the default `"fast"` one is `fast_hash32`, the shingle's UTF-8 bytes read as one
big-endian integer modulo 2^32 - 5. It is computed for a whole batch of documents without a Python
loop over words or shingles (UTF-8 bytes classified as word / not word, word hashes folded 8 bytes
at a time, shingle hashes folded from word hashes), and datasketch given `hashfunc=fast_hash32`
produces bit-identical signatures. `"sha1"` is datasketch's default hash (first 4 bytes of SHA-1,
little endian), for bit-identical signatures with datasketch's defaults; it is hashed one shingle at
a time and is several times slower.

LSH splits the first b*r signature values into b bands of r rows; two documents are candidates when
all r values of some band agree. (b, r) minimize the equally weighted false positive and false
negative probabilities at the threshold, as datasketch's MinHashLSH does.
"""
from __future__ import annotations

import hashlib
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
FAST_PRIME = 4294967291  # 2^32 - 5
_P = np.uint64(FAST_PRIME)


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what "the same text" means for dedup."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def words(text: str) -> list[str]:
    """The words of `text` after normalization (NFKC is a no-op on ASCII, so skip it there)."""
    if text.isascii():
        return WORD.findall(text.lower())
    return WORD.findall(_nfkc(text).lower())


def shingles(text: str, ngram: int = 5) -> list[bytes]:
    """The word n-gram shingles of `text` as UTF-8 bytes (what datasketch is fed in comparisons)."""
    w = words(text)
    if not w:
        return []
    if len(w) < ngram:
        return [" ".join(w).encode()]
    return [" ".join(w[i:i + ngram]).encode() for i in range(len(w) - ngram + 1)]


def fast_hash32(data: bytes) -> int:
    """The `fast` shingle hash: the UTF-8 bytes read as one big-endian integer, modulo the largest prime
    below 2^32. `MinHasher` computes it for all shingles at once with numpy; this plain version is for
    handing to datasketch (`MinHash(hashfunc=fast_hash32)`) to get bit-identical signatures."""
    return int.from_bytes(data, "big") % FAST_PRIME


def _nfkc(text: str) -> str:
    # the quick check is much cheaper than normalizing text that already is NFKC (most text)
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def _modp(x: np.ndarray) -> np.ndarray:
    return x - (x // _P) * _P  # floor division by a scalar is much faster than numpy's %


# `\w` of str patterns is "isalnum() or _" (CPython's SRE_UNI_IS_WORD); a table per code point
_WORD_ASCII = np.array([chr(c).isalnum() or c == 95 for c in range(128)] + [False] * 128, dtype=np.int8)
_WORD_BMP: Optional[np.ndarray] = None
_POW256 = np.ones(1, dtype=np.uint64)  # 256^k mod FAST_PRIME, grown on demand


def _word_bytes(data: np.ndarray) -> np.ndarray:
    """int8 [len(data)]: 1 where the UTF-8 byte belongs to a word character (`\\w`)."""
    global _WORD_BMP
    out = _WORD_ASCII[data]
    lead = np.flatnonzero((data >= 0xC0) & (data < 0xF8))  # first byte of each non-ASCII character
    if len(lead) == 0:
        return out
    if _WORD_BMP is None:
        _WORD_BMP = np.array([c.isalnum() for c in map(chr, range(0x10000))], dtype=np.int8)
    b0 = data[lead].astype(np.uint32)
    size = 2 + (b0 >= 0xE0) + (b0 >= 0xF0)
    cont = [data[np.minimum(lead + k, len(data) - 1)].astype(np.uint32) & 0x3F for k in (1, 2, 3)]
    cp = np.select([size == 2, size == 3],
                   [(b0 & 0x1F) << 6 | cont[0], (b0 & 0x0F) << 12 | cont[0] << 6 | cont[1]],
                   (b0 & 0x07) << 18 | cont[0] << 12 | cont[1] << 6 | cont[2])
    word = _WORD_BMP.take(cp, mode="clip")
    astral = np.flatnonzero(cp > 0xFFFF)
    if len(astral):
        uniq, inv = np.unique(cp[astral], return_inverse=True)
        word[astral] = np.array([chr(c).isalnum() for c in uniq.tolist()], dtype=np.int8)[inv]
    for k in range(size.max()):  # every byte of the character gets its class
        m = size > k
        out[lead[m] + k] = word[m]
    return out


def _pow256(exponents: np.ndarray) -> np.ndarray:
    global _POW256
    top = int(exponents.max())
    if top >= len(_POW256):
        vals = [1]
        for _ in range(max(top + 1, 2 * len(_POW256), 256) - 1):
            vals.append(vals[-1] * 256 % FAST_PRIME)
        _POW256 = np.array(vals, dtype=np.uint64)
    return _POW256[exponents]


def _word_hashes(data: np.ndarray, w_start: np.ndarray, w_len: np.ndarray) -> np.ndarray:
    """fast_hash32 (as uint64) of the words at byte offsets `w_start`, `w_len` bytes long, in the UTF-8
    buffer `data` (padded with at least 8 zero bytes). The integer is folded 8 bytes at a time, the
    short chunk first (one step for most words), over all words at once; 2^64 = 25 (mod p) keeps every
    intermediate below 2^64."""
    # uint64 starting at every byte offset: a strided view, no copy; byteswapped after the gather
    le8 = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    chunks = (w_len + 7) // 8
    head = (w_len - 8 * (chunks - 1)).astype(np.uint64)  # 1..8 bytes in the first chunk
    h = _modp(le8[w_start].byteswap() >> ((np.uint64(8) - head) * np.uint64(8)))
    at = np.flatnonzero(chunks > 1)
    pos, left = w_start[at] + head[at].astype(np.int64), chunks[at] - 1
    while len(at):
        h[at] = _modp(h[at] * np.uint64(25) + _modp(le8[pos].byteswap()))
        go = left > 1
        at, pos, left = at[go], pos[go] + 8, left[go] - 1
    return h


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


def _batches(texts: Sequence[str], max_chars: int = 1 << 22) -> Iterable[tuple[int, int]]:
    """(lo, hi) runs of texts of about `max_chars` characters: bounds the memory of the per-byte and
    per-shingle arrays (~40 bytes per character) while keeping numpy calls large."""
    lo, size = 0, 0
    for i, n in enumerate(map(len, texts)):
        size += n
        if size >= max_chars:
            yield lo, i + 1
            lo, size = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)


class MinHasher:
    """Signatures of many texts at once: `signatures(texts) -> (uint32 [N, num_perm], has_shingles [N])`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, shingle_hash: str = "fast",
                 chunk_elements: int = 1 << 21, threads: Optional[int] = None):
        if shingle_hash not in SHINGLE_HASHES:
            raise ValueError(f"shingle_hash must be one of {SHINGLE_HASHES}")
        self.num_perm, self.seed, self.ngram, self.shingle_hash = num_perm, seed, ngram, shingle_hash
        self.a, self.b = permutations(num_perm, seed)
        # 2M elements (8 MB of uint32 per thread): measured fastest; small slices pay per-call overhead
        self.chunk_shingles = max(1, chunk_elements // num_perm)
        self.threads = threads or os.cpu_count() or 1

    # -- shingle hashes -----------------------------------------------------------------------------
    def _words(self, texts: Sequence[str]):
        """The words of all texts at once, as byte ranges of one UTF-8 buffer: (buffer padded with 8
        zero bytes, word starts, word byte lengths, index of each text's first word [N + 1], shingle
        windows (index of the first word, number of words), shingles per text). A window is n
        consecutive words of one text, or all words of a text with fewer than n."""
        n = self.ngram
        encoded = [(t if t.isascii() else _nfkc(t).lower()).encode("utf-8", "surrogatepass") for t in texts]
        doc_start = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1, out=doc_start[1:])
        # 0xFF never occurs in UTF-8, so it separates documents; bytes.lower() lowers the ASCII
        # documents (the others are lowered already) and nothing else
        data = np.frombuffer(b"\xff".join(encoded).lower() + bytes(8), dtype=np.uint8)
        is_word = _word_bytes(data[:-8])
        edges = np.flatnonzero(np.diff(is_word, prepend=np.int8(0), append=np.int8(0)))
        w_start, w_end = edges[0::2], edges[1::2]
        first = np.searchsorted(w_start, doc_start)
        per_doc = np.diff(first)
        counts = np.where(per_doc == 0, 0, np.maximum(per_doc - n + 1, 1))
        w_doc = np.repeat(np.arange(len(per_doc)), per_doc)
        size = np.minimum(n, per_doc)
        at = np.flatnonzero(np.arange(len(w_start)) - first[:-1][w_doc] <= (per_doc - size)[w_doc])
        return data, w_start, w_end - w_start, first, (at, size[w_doc[at]]), counts

    def _fast_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(`fast_hash32` of every shingle, concatenated over texts; count per text), computed without a
        Python loop over words or shingles: word hashes are folded from the bytes for all words at
        once, and shingle hashes from word hashes (the hash of a concatenation is a function of the
        parts' hashes and byte lengths)."""
        n = self.ngram
        data, w_start, b_len, first, (at, size), counts = self._words(texts)
        n_words = len(w_start)
        if n_words == 0:
            return np.zeros(0, dtype=np.uint32), counts
        h = _word_hashes(data, w_start, b_len)
        # appending b" " + word to a hash h: h * 256^(1+len) + 32 * 256^len + word (mod p) = h * mul + add
        pw = _pow256(b_len)
        mul = _modp(pw << np.uint64(8))
        add = _modp((pw << np.uint64(5)) + h)
        # the window starting at every word, in place over contiguous slices; windows of texts shorter
        # than n words are set aside when complete
        short = np.flatnonzero(size < n)
        done = {}
        for k in range(1, n):
            for w in short[size[short] == k].tolist():
                done[w] = h[at[w]]
            h[:n_words - k] = _modp(h[:n_words - k] * mul[k:] + add[k:])
        h = h[at]
        if done:
            h[np.fromiter(done, dtype=np.int64)] = np.fromiter(done.values(), dtype=np.uint64, count=len(done))
        return h.astype(np.uint32), counts

    def _sha1_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """datasketch's shingle hash: SHA-1 one shingle at a time (the C call per shingle is the cost),
        over slices of one buffer of the normalized text ("word word word ...") instead of joined strings."""
        data, w_start, b_len, first, (at, size), counts = self._words(texts)
        if len(w_start) == 0:
            return np.zeros(0, dtype=np.uint32), counts
        # every word followed by one space, all words back to back
        new_start = np.zeros(len(w_start), dtype=np.int64)
        np.cumsum(b_len[:-1] + 1, out=new_start[1:])
        total = int(new_start[-1] + b_len[-1])
        offset = np.arange(int(b_len.sum())) - np.repeat(np.cumsum(b_len) - b_len, b_len)  # within its word
        flat = np.full(total, 32, dtype=np.uint8)
        flat[np.repeat(new_start, b_len) + offset] = data[np.repeat(w_start, b_len) + offset]
        buf = flat.tobytes()
        last = at + size - 1
        ends = (new_start[last] + b_len[last]).tolist()
        sha1 = hashlib.sha1
        digests = b"".join([sha1(buf[s:e]).digest()[:4] for s, e in zip(new_start[at].tolist(), ends)])
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
        for lo, hi in _batches(texts):
            hv, counts = self.shingle_hashes(texts[lo:hi])
            has[lo:hi] = counts > 0
            out[lo:hi] = self.signatures_from_hashes(hv, counts)
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
                # [num_perm, shingles]: reduceat along the contiguous axis is ~5x faster than along axis 0
                phv = self.a[:, None] * hv[None, start:stop]
                phv += self.b[:, None]
                out[nonempty] = np.minimum.reduceat(phv, (ends[nonempty] - counts[nonempty]) - start, axis=1).T

        workers = min(len(slices), self.threads)
        if workers <= 1:
            for span in slices:
                work(span)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, slices))


# -- LSH ---------------------------------------------------------------------------------------------
def _simpson_weights(lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(lo, hi, n)
    w = np.full(n, 2.0)
    w[1:-1:2] = 4.0
    w[0] = w[-1] = 1.0
    return x, w * (hi - lo) / (3 * (n - 1))


def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimizing weights[0]*P(false positive) + weights[1]*P(false negative), the
    probabilities integrated over the Jaccard similarity below / above the threshold (Simpson's rule)
    for every (b, r) with b*r <= num_perm at once; ties go to the smallest b, then r, as datasketch's."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be in (0, 1)")
    n = 1025
    x_fp, w_fp = _simpson_weights(0.0, threshold, n)
    x_fn, w_fn = _simpson_weights(threshold, 1.0, n)
    rows = np.arange(1, num_perm + 1)[:, None]
    with np.errstate(divide="ignore"):
        # log(1 - s^r) for every r; P(candidate) = 1 - (1 - s^r)^b = 1 - exp(b * log(1 - s^r))
        log_fp = np.log1p(-x_fp[None, :] ** rows)
        log_fn = np.log1p(-x_fn[None, :] ** rows)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        r_max = num_perm // b
        fp = (1 - np.exp(b * log_fp[:r_max])) @ w_fp
        fn = np.exp(b * log_fn[:r_max]) @ w_fn
        err = weights[0] * fp + weights[1] * fn
        r = int(np.argmin(err))
        if err[r] < best_err:
            best, best_err = (b, r + 1), float(err[r])
    return best


def _band_keys(band: np.ndarray) -> np.ndarray:
    """One uint64 per row of `band` (uint32 [N, r]): a polynomial in odd 64-bit multipliers, so equal
    rows get equal keys; unequal rows that collide are caught by the check in `_band_groups`."""
    key = np.zeros(len(band), dtype=np.uint64)
    for c in range(band.shape[1]):
        key = (key ^ band[:, c]) * np.uint64(0x9E3779B97F4A7C15)
        key ^= key >> np.uint64(29)
    return key


def _band_groups(sigs: np.ndarray, b: int, r: int, rows: np.ndarray) -> Iterable[np.ndarray]:
    """For each band, arrays of row indices (into `rows`) whose band values agree (groups of >= 2)."""
    for j in range(b):
        band = np.ascontiguousarray(sigs[rows, j * r:(j + 1) * r])
        keys = _band_keys(band)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        if len(sk) < 2:
            continue
        same = sk[1:] == sk[:-1]
        # a 64-bit key collision between different band values would merge buckets: compare the
        # rows themselves and fall back to sorting the full values if that ever happens
        if not (band[order[1:][same]] == band[order[:-1][same]]).all():
            keys = band.view(np.dtype((np.void, band.dtype.itemsize * r))).ravel()
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            same = sk[1:] == sk[:-1]
        change = np.flatnonzero(~same) + 1
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


def components(groups: Iterable[Sequence[int]]) -> list[list[int]]:
    """Connected components (size >= 2) of the graph in which every group's members are linked, each
    sorted, in order of their smallest member: union-find over star edges per group (the same
    components as all pairs, without the quadratic blow-up). Only nodes that occur in a group are
    held, so it is as cheap on a billion-node index as the duplicates are few; distributed dedup
    runs it per reducer and again over the reducers' components."""
    parent: dict[int, int] = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for group in groups:
        members = [int(m) for m in group]
        first = find(min(members))
        for other in members:
            parent.setdefault(other, other)
            ro = find(other)
            if ro != first:
                lo, hi = min(ro, first), max(ro, first)
                parent[hi] = lo
                first = lo
    comps: dict[int, list[int]] = {}
    for node in parent:
        comps.setdefault(find(node), []).append(node)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def clusters(sigs: np.ndarray, b: int, r: int, mask: Optional[np.ndarray] = None) -> list[list[int]]:
    """Connected components (size >= 2) of the candidate graph (documents sharing a band bucket),
    each sorted, in order of their first member."""
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(sigs))
    return components(_band_groups(sigs, b, r, rows))
