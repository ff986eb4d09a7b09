"""The vectorized shingle hashes against their plain definitions, and against datasketch given the same hash."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from openseason.data import minhash
from openseason.data.minhash import (MinHasher, candidate_pairs, clusters, fast_hash32, lsh_params, sha1_hash32,
                                     shingles)

TRICKY = [
    "", "!!! ... ???", "one", "Two words", "a b c d", "a b c d e", "a b c d e f",
    "ΣΑΣ ΟΔΟΣ Σ final sigma", "ﬁne ﬂow Ⅻ ①②③ ｆｕｌｌｗｉｄｔｈ ２０２３",  # NFKC changes these
    "emoji 😀 𝐀𝐁𝐂 word 𝟙𝟚 𐐀𐐨 (astral letters and digits)", "İstanbul ǅungla Straße",
    "snake_case __dunder__ x_1 don't e.g. 3.14 ±5 — dash “quotes”",
    "nul\x00separated\x00words in one text", "tab\tnew\nline  cr\r\nend",
    "x" * 100 + " " + "é" * 70 + " " + "日本語のテキスト" * 9 + " y z w v u",  # words of 8+ bytes
    "abcdefgh abcdefghi abcdefghijklmnop abcdefghijklmnopq",  # 8-byte chunk edges
    "中文 文本 没有 空格 也 可以 分词 吗", "עברית וערבית عربي مكتوب", "ﷺ ﷽ ligatures",
]


def rows(path):
    return [json.loads(line) for line in open(path)]


def real_texts(shared_data, limit=400):
    texts = [r["response"] for r in rows(shared_data / "dolly-15k/dolly_sample.jsonl")][:limit]
    texts += [r["text"] for r in rows(shared_data / "oasst1/oasst1_validation_en_sample.jsonl")][:limit]
    texts += [" ".join(t.split()[:-1] + ["changed"]) for t in texts[:80] if len(t.split()) > 120]
    return texts


def reference_hashes(texts, ngram=5):
    hashes = [fast_hash32(s) for t in texts for s in shingles(t, ngram)]
    return np.array(hashes, dtype=np.uint32), np.array([len(shingles(t, ngram)) for t in texts])


def test_word_characters_match_the_regex_on_every_bmp_code_point():
    # the byte classifier decodes UTF-8 itself; it must agree with `\w` for every character
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000] + ["😀", "𝐀", "𝟙", "𐐀", "\U000E0100"]
    data = np.frombuffer(("\n".join(chars)).encode() + bytes(8), dtype=np.uint8)
    marks = minhash._word_bytes(data[:-8])
    starts = np.concatenate([[0], np.cumsum([len(c.encode()) + 1 for c in chars])[:-1]])
    ours = marks[starts].astype(bool)
    word = re.compile(r"\w")
    theirs = np.array([bool(word.match(c)) for c in chars])
    assert np.array_equal(ours, theirs), [chars[i] for i in np.flatnonzero(ours != theirs)[:10]]


@pytest.mark.parametrize("ngram", [1, 3, 5])
def test_vectorized_fast_hash_equals_its_definition(ngram, shared_data):
    texts = TRICKY + real_texts(shared_data, 150)
    hv, counts = MinHasher(64, ngram=ngram).shingle_hashes(texts)
    ref, ref_counts = reference_hashes(texts, ngram)
    assert np.array_equal(counts, ref_counts)
    assert np.array_equal(hv, ref)
    sha1, sha1_counts = MinHasher(64, ngram=ngram, shingle_hash="sha1").shingle_hashes(texts)
    assert np.array_equal(sha1_counts, ref_counts)
    assert sha1.tolist() == [sha1_hash32(s) for t in texts for s in shingles(t, ngram)]
    # an all-ASCII batch takes a shorter path
    ascii_texts = [t for t in texts if t.isascii()]
    hv, counts = MinHasher(64, ngram=ngram).shingle_hashes(ascii_texts)
    assert np.array_equal(hv, reference_hashes(ascii_texts, ngram)[0])


def test_fast_hash_known_values():
    # int.from_bytes(b"a", "big") = 97; b"ab" = 97 * 256 + 98; 2^32 and up wrap modulo 2^32 - 5
    assert fast_hash32(b"a") == 97 and fast_hash32(b"ab") == 24930
    assert fast_hash32(b"\x01\x00\x00\x00\x00") == 5
    hv, _ = MinHasher(8, ngram=2).shingle_hashes(["A b"])
    assert hv.tolist() == [fast_hash32(b"a b")]


def test_batches_do_not_change_signatures(shared_data, monkeypatch):
    texts = TRICKY + real_texts(shared_data, 100)
    whole, has = MinHasher(32).signatures(texts)
    original = minhash._batches
    monkeypatch.setattr(minhash, "_batches", lambda t: original(t, max_chars=5000))
    assert len(list(minhash._batches(texts))) > 10
    parts, has2 = MinHasher(32, threads=1, chunk_elements=4096).signatures(texts)
    assert np.array_equal(whole, parts) and np.array_equal(has, has2)


def test_fast_mode_is_bit_identical_to_datasketch_given_fast_hash32(shared_data):
    datasketch = pytest.importorskip("datasketch")
    texts = real_texts(shared_data) + TRICKY
    sigs, has = MinHasher(128).signatures(texts)
    keep = [i for i in range(len(texts)) if has[i]]
    theirs = {}
    for i in keep:
        m = datasketch.MinHash(num_perm=128, hashfunc=fast_hash32)
        m.update_batch(shingles(texts[i]))
        theirs[i] = m
        assert np.array_equal(sigs[i], m.hashvalues), texts[i][:60]
    lsh = datasketch.MinHashLSH(threshold=0.87, num_perm=128)
    for i in keep:
        lsh.insert(i, theirs[i])
    ds_pairs = {(min(i, j), max(i, j)) for i in keep for j in lsh.query(theirs[i]) if j != i}
    ours = candidate_pairs(sigs, *lsh_params(0.87, 128), mask=has)
    assert len(ds_pairs) >= 5 and ours == ds_pairs


def test_lsh_params_match_datasketch_everywhere():
    pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    for num_perm in (16, 64, 128, 256):
        for threshold in (0.3, 0.5, 0.7, 0.8, 0.87, 0.9, 0.95):
            assert lsh_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert lsh_params(0.8, 128, (0.3, 0.7)) == _optimal_param(0.8, 128, 0.3, 0.7)


def test_band_key_collisions_fall_back_to_exact_buckets(monkeypatch):
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(40, 12), dtype=np.uint32)
    sigs[5] = sigs[3]
    sigs[7, :4] = sigs[30, :4]  # share band 0 only
    sigs[11, 8:] = sigs[12, 8:]  # share band 2 only
    expected = {(3, 5), (7, 30), (11, 12)}
    assert candidate_pairs(sigs, 3, 4) == expected
    # every key equal: all rows collide, and the exact comparison must undo it
    monkeypatch.setattr(minhash, "_band_keys", lambda band: np.zeros(len(band), dtype=np.uint64))
    assert candidate_pairs(sigs, 3, 4) == expected
    assert clusters(sigs, 3, 4) == [[3, 5], [7, 30], [11, 12]]
