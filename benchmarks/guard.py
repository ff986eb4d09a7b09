"""Guardrails decision latency and intent accuracy: ours vs a sentence-transformers peer.

Per-turn latency is `Rails.check(message)` on the shipped 57-intent `support` config with the real
all-MiniLM-L6-v2 on CPU (model load excluded; the query cache is cleared before each call so every
turn really runs the encoder). The peer does what NeMo Guardrails' SentenceTransformers provider
does per turn: `SentenceTransformer.encode(message)` plus a cosine search over the same examples.

    .venv/bin/python benchmarks/guard.py [--passes 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from openseason.guard import EXAMPLES, Rails, RailsConfig, example_config  # noqa: E402
from openseason.guard.evaluate import accuracy, load_paraphrases  # noqa: E402


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    rows = load_paraphrases(EXAMPLES / "support_paraphrases.txt")
    texts = [t for _, t in rows]

    t0 = time.perf_counter()
    rails = Rails(RailsConfig.from_path(example_config("support")))
    load_s = time.perf_counter() - t0
    print(f"ours: load {load_s:.2f}s, {len(rails.index.intents)} intents, {len(rails.index)} examples, "
          f"torch threads {torch.get_num_threads()} (queries on {rails.embedder.query_threads})")
    report = accuracy(rails, rows)
    ours, ours_cpu = [], []
    for _ in range(args.passes):
        for text in texts:
            rails.embedder._cache.clear()
            t, c = time.perf_counter(), time.process_time()
            rails.check(text)
            ours.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c)  # CPU time: what the turn costs on an idle core
    conv = []
    for i in range(0, len(texts) - 2, 3):  # 3-turn conversations: input rails see all three turns
        messages = [{"role": "user", "content": texts[i]}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": texts[i + 1]}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": texts[i + 2]}]
        rails.check(messages[:3])  # the earlier turns were seen on the previous call
        t = time.perf_counter()
        rails.check(messages)
        conv.append(time.perf_counter() - t)

    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(rails.embedder.model_dir), device="cpu")
    st_load = time.perf_counter() - t0
    matrix = torch.tensor(st.encode(rails.index.texts, normalize_embeddings=True))
    labels = rails.index.labels
    peer, peer1, hits = [], [], 0
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # the peer again on one thread, like our query path
    for text in texts:
        t = time.perf_counter()
        v = torch.tensor(st.encode([text], normalize_embeddings=True))[0]
        int((matrix @ v).argmax())
        peer1.append(time.perf_counter() - t)
    torch.set_num_threads(saved)
    for p in range(1):  # the two-thread peer is slow on a busy machine; one pass is enough
        for label, text in rows:
            t = time.perf_counter()
            v = torch.tensor(st.encode([text], normalize_embeddings=True))[0]
            sims = matrix @ v
            best = int(sims.argmax())
            intent = labels[best] if float(sims[best]) >= rails.config.threshold else rails.config.fallback_intent
            peer.append(time.perf_counter() - t)
            hits += (intent == label) if p == 0 else 0

    o50, o99, p50, p99 = pct(ours, 50), pct(ours, 99), pct(peer, 50), pct(peer, 99)
    print(f"intent accuracy  ours {report['accuracy']:.3f} ({report['correct']}/{report['total']}), "
          f"peer {hits / len(rows):.3f}; LLM calls: {report['llm_calls']}")
    print(f"per-turn decision latency  ours p50 {o50:.2f} ms p99 {o99:.2f} ms | "
          f"peer (sentence-transformers encode + search) p50 {p50:.2f} ms p99 {p99:.2f} ms | "
          f"peer/ours p50 {p50 / o50:.2f}x")
    print(f"ours CPU time per turn (single-threaded query path)  p50 {pct(ours_cpu, 50):.2f} ms "
          f"p99 {pct(ours_cpu, 99):.2f} ms")
    print(f"peer on one thread  p50 {pct(peer1, 50):.2f} ms p99 {pct(peer1, 99):.2f} ms | "
          f"peer/ours p50 {pct(peer1, 50) / o50:.2f}x")
    print(f"3-turn conversation check (input rails on every turn)  p50 {pct(conv, 50):.2f} ms "
          f"p99 {pct(conv, 99):.2f} ms")
    print(f"model load: ours {load_s:.2f}s (includes index), sentence-transformers {st_load:.2f}s")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"median ours {statistics.median(ours) * 1000:.2f} ms over {len(ours)} turns")


if __name__ == "__main__":
    main()
