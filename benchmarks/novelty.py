"""Benchmark: our ROUGE-L novelty filter vs a rouge_score-based reference filter, same run, same data.

Instructions: the 175 Self-Instruct seeds go into both pools first; then every Alpaca Libre generated
instruction (v1-v3, malformed upstream lines skipped), the 252 user-oriented tasks, and one
deterministic paraphrase of each distinct instruction (leading verb swapped for a synonym, or a
polite prefix / a short suffix added — the near-duplicates an LLM really produces), shuffled with a
fixed seed. Times are wall clock and CPU time (process_time: fairer on a shared machine). The reference does what Alpaca's generate_instruction.py does: tokenize once with
rouge_score's tokenizer, score the new instruction against every pool entry with
`rouge_scorer._score_lcs`, keep it if the maximum is <= 0.7. Both must take identical decisions and
report identical max scores; the script prints the timings and the speed ratio.

    python benchmarks/novelty.py [--data ../shared/data] [--reference-limit N]

--reference-limit times the reference on the first N instructions only and extrapolates (printed
as such); by default the reference runs over everything.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openseason.synth.rouge import NoveltyFilter  # noqa: E402

SYNONYMS = {"Write": "Compose", "Generate": "Produce", "Create": "Come up with", "Describe": "Explain",
            "Explain": "Describe", "List": "Name", "Give": "Provide", "Find": "Identify",
            "Suggest": "Recommend", "Classify": "Categorize", "Identify": "Find", "Make": "Create",
            "Rewrite": "Rephrase", "Summarize": "Sum up", "Provide": "Give", "Name": "List"}
PREFIXES = ["Please ", "Can you ", "I need you to ", "Quickly "]
SUFFIXES = [" Be concise.", " Keep it short.", " Explain your answer.", " Use simple words."]


def paraphrase(text: str, rng: random.Random) -> str:
    words = text.split(" ", 1)
    if words[0] in SYNONYMS and rng.random() < 0.6:
        return SYNONYMS[words[0]] + (" " + words[1] if len(words) > 1 else "")
    if rng.random() < 0.5:
        return rng.choice(PREFIXES) + text[:1].lower() + text[1:]
    return text.rstrip() + rng.choice(SUFFIXES)


def load_instructions(data: Path) -> tuple[list[str], list[str]]:
    seeds = [json.loads(line)["instruction"] for line in open(data / "self-instruct/seed_tasks.jsonl")]
    generated: list[str] = []
    for v in (1, 2, 3):
        for line in open(data / f"alpaca-format/alpaca_libre_tasks_v{v}.jsonl", encoding="utf-8"):
            try:
                generated.append(json.loads(line)["instruction"])
            except json.JSONDecodeError:
                continue  # 14 malformed lines upstream in v2
    generated += [json.loads(line)["instruction"]
                  for line in open(data / "self-instruct/user_oriented_instructions.jsonl")]
    rng = random.Random(0)
    distinct = list(dict.fromkeys(generated))
    stream = generated + [paraphrase(t, rng) for t in distinct]
    rng.shuffle(stream)
    return seeds, stream


def run_ours(seeds, stream, threshold):
    f = NoveltyFilter(threshold)
    f.extend(seeds)
    start, cpu = time.perf_counter(), time.process_time()
    out = [f.add(text) for text in stream]
    return out, (time.perf_counter() - start, time.process_time() - cpu), f.lcs_computed


def run_reference(seeds, stream, threshold, limit=None):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tok = scorer._tokenizer.tokenize
    pool = [tok(s) for s in seeds]
    out = []
    start, cpu = time.perf_counter(), time.process_time()
    for text in stream[:limit]:
        tokens = tok(text)
        best = max((rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool), default=0.0)
        accepted = best <= threshold
        if accepted:
            pool.append(tokens)
        out.append((accepted, float(best)))
    return out, (time.perf_counter() - start, time.process_time() - cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--reference-limit", type=int, default=None)
    args = ap.parse_args()
    seeds, stream = load_instructions(args.data)
    print(f"instructions: {len(stream)} to filter ({len(set(stream))} distinct), {len(seeds)} seeds in the pool")
    ours, t_ours, lcs = run_ours(seeds, stream, args.threshold)
    kept = sum(a for a, _ in ours)
    pairs = sum(len(seeds) + sum(a for a, _ in ours[:i]) for i in range(len(ours)))
    print(f"ours:      {t_ours[0]:8.2f} s wall, {t_ours[1]:8.2f} s CPU  kept {kept}, rejected {len(ours) - kept}; "
          f"exact LCS computed for {lcs} of {pairs} pairs")
    ref, t_ref = run_reference(seeds, stream, args.threshold, args.reference_limit)
    n = len(ref)
    same_decisions = all(a == b for (a, _), (b, _) in zip(ours[:n], ref))
    same_scores = all(x == y for (_, x), (_, y) in zip(ours[:n], ref))
    print(f"reference: {t_ref[0]:8.2f} s wall, {t_ref[1]:8.2f} s CPU  over {n} instructions"
          + ("" if n == len(stream) else " (subset: the ratio below compares the same prefix)"))
    print(f"identical decisions: {same_decisions}; identical max scores: {same_scores}")
    if n == len(stream):
        print(f"speed ratio: {t_ref[1] / t_ours[1]:.0f}x CPU time ({t_ref[0] / t_ours[0]:.0f}x wall)")
    else:
        _, t_prefix, _ = run_ours(seeds, stream[:n], args.threshold)
        print(f"speed ratio on the first {n}: {t_ref[1] / t_prefix[1]:.0f}x CPU time "
              "(reference timed on a subset only)")
    return 0 if same_decisions and same_scores else 1


if __name__ == "__main__":
    sys.exit(main())
