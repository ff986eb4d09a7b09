"""Near-duplicate detection: openseason's vectorized MinHash-LSH vs datasketch's MinHashLSH.

Same documents, same word 5-gram shingles, same num_perm and threshold, one process. The documents
are real texts from ../shared/data (Dolly, OASST1, HH-RLHF, Alpaca Libre, Self-Instruct) plus edited
copies of a fifth of them (0-20% of words replaced) so that there are duplicates at every
similarity. Both sides are timed from raw text to the set of candidate pairs; datasketch uses its
fastest documented path (MinHash.bulk + an insertion session, then one query per document).

Rows: (1) each side's default shingle hash (datasketch: SHA-1; ours: `fast_hash32`), independent
hash functions, so pairs near the threshold fall either way by chance; (2) the same shingle hash on
both sides: datasketch gets `hashfunc=fast_hash32`, a one-line C-speed function (cheaper per call
than its default SHA-1), so signatures are bit-identical and the comparison is engine against engine;
(3) both sides SHA-1; (4) MinHash + LSH only, from the same precomputed 32-bit shingle hashes.
openseason uses numpy threads for the signatures (2 on this machine); a 1-thread row is printed too.

    .venv/bin/python benchmarks/dedup.py [--num-perm 128] [--threshold 0.87] [--repeat 3]
"""
from __future__ import annotations

import argparse
import gzip
import os
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from openseason.data.minhash import MinHasher, candidate_pairs, fast_hash32, lsh_params, shingles  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def load_texts() -> list[str]:
    texts = []
    for line in open(DATA / "dolly-15k/dolly_sample.jsonl"):
        row = json.loads(line)
        texts.append((row["context"] + "\n" + row["response"]).strip())
    texts += [json.loads(line)["text"] for line in open(DATA / "oasst1/oasst1_validation_en_sample.jsonl")]
    texts += [json.loads(line)["chosen"] for line in gzip.open(DATA / "hh-rlhf/harmless-base_test.jsonl.gz", "rt")]
    texts += [r["instruction"] + "\n" + r["input"] + "\n" + r["output"]
              for r in json.load(open(DATA / "alpaca-format/alpaca_libre_ok_sample_2000.json"))]
    texts += [json.loads(line)["instruction"] for line in open(DATA / "self-instruct/seed_tasks.jsonl")]
    rng = random.Random(0)
    vocab = " ".join(texts[:500]).split()
    edited = []
    for text in rng.sample(texts, len(texts) // 5):
        words = text.split()
        rate = rng.choice([0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
        edited.append(" ".join(rng.choice(vocab) if rng.random() < rate else w for w in words))
    return texts + edited


def engine_ours(hv, counts, num_perm, threshold):
    b, r = lsh_params(threshold, num_perm)
    sigs = MinHasher(num_perm).signatures_from_hashes(hv, counts)
    return candidate_pairs(sigs, b, r, mask=counts > 0)


def engine_theirs(sets, num_perm, threshold):
    from datasketch import MinHash, MinHashLSH

    keep = [i for i, s in enumerate(sets) if s]
    hashes = MinHash.bulk([sets[i] for i in keep], num_perm=num_perm, hashfunc=int)
    return _lsh_pairs(keep, hashes, num_perm, threshold)


def _lsh_pairs(keep, hashes, num_perm, threshold):
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in zip(keep, hashes):
            session.insert(i, m)
    pairs = set()
    for i, m in zip(keep, hashes):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def ours(texts, num_perm, threshold, shingle_hash, threads=None):
    b, r = lsh_params(threshold, num_perm)
    sigs, has = MinHasher(num_perm, shingle_hash=shingle_hash, threads=threads).signatures(texts)
    return candidate_pairs(sigs, b, r, mask=has)


def theirs(texts, num_perm, threshold, seed=1, hashfunc=None):
    from datasketch import MinHash

    sets = [shingles(t) for t in texts]
    keep = [i for i, s in enumerate(sets) if s]
    extra = {"hashfunc": hashfunc} if hashfunc else {}
    hashes = MinHash.bulk([sets[i] for i in keep], num_perm=num_perm, seed=seed, **extra)
    return _lsh_pairs(keep, hashes, num_perm, threshold)


def agreement(a, b):
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def best_of(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def row(name, t, p, t_ref, p_ref, n):
    print(f"  {name:44s} {t:7.3f} s {n / t:8.0f} docs/s  {len(p)} pairs  speedup {t_ref / t:4.1f}x  "
          f"pair agreement {100 * agreement(p, p_ref):6.2f}% (only ours {len(p - p_ref)}, only datasketch "
          f"{len(p_ref - p)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.87)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    texts = load_texts()
    n, k, th = len(texts), args.num_perm, args.threshold
    mb = sum(len(t.encode()) for t in texts) / 1e6
    import datasketch
    print(f"{n} documents, {mb:.1f} MB; num_perm={k} threshold={th} bands,rows={lsh_params(th, k)}; "
          f"datasketch {datasketch.__version__}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; best of {args.repeat}")
    ours(texts[:50], k, th, "fast")  # one-off lookup tables, outside the timings

    print("\n1) end to end, each side's default shingle hash (datasketch SHA-1, ours fast_hash32)")
    t_ds, p_ds = best_of(lambda: theirs(texts, k, th), args.repeat)
    print(f"  {'datasketch, sha1_hash32 (its default)':44s} {t_ds:7.3f} s {n / t_ds:8.0f} docs/s  {len(p_ds)} pairs")
    t, p = best_of(lambda: ours(texts, k, th, "fast"), args.repeat)
    row("openseason, fast_hash32 (default)", t, p, t_ds, p_ds, n)
    p_seed2 = theirs(texts, k, th, seed=2)
    print(f"  (independent hashing agrees only by chance near the threshold: datasketch seed 1 vs seed 2 "
          f"agree on {100 * agreement(p_ds, p_seed2):.2f}% of pairs)")

    print("\n2) end to end, the same shingle hash on both sides: fast_hash32 (bit-identical signatures)")
    t_df, p_df = best_of(lambda: theirs(texts, k, th, hashfunc=fast_hash32), args.repeat)
    print(f"  {'datasketch, hashfunc=fast_hash32':44s} {t_df:7.3f} s {n / t_df:8.0f} docs/s  {len(p_df)} pairs")
    t, p = best_of(lambda: ours(texts, k, th, "fast"), args.repeat)
    row("openseason, fast_hash32", t, p, t_df, p_df, n)
    t, p = best_of(lambda: ours(texts, k, th, "fast", threads=1), args.repeat)
    row("openseason, fast_hash32, 1 thread", t, p, t_df, p_df, n)

    print("\n3) end to end, SHA-1 shingle hash on both sides (bit-identical signatures)")
    t, p = best_of(lambda: ours(texts, k, th, "sha1"), args.repeat)
    row("openseason, sha1", t, p, t_ds, p_ds, n)

    print("\n4) MinHash + LSH engine only: both sides get the same precomputed 32-bit shingle hashes")
    hasher = MinHasher(k)
    hv, counts = hasher.shingle_hashes(texts)
    ends = np.cumsum(counts)
    sets = [hv[e - c:e].tolist() for e, c in zip(ends, counts)]
    t_de, p_de = best_of(lambda: engine_theirs(sets, k, th), args.repeat)
    print(f"  {'datasketch':44s} {t_de:7.3f} s {n / t_de:8.0f} docs/s  {len(p_de)} pairs")
    t_oe, p_oe = best_of(lambda: engine_ours(hv, counts, k, th), args.repeat)
    row("openseason", t_oe, p_oe, t_de, p_de, n)
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
