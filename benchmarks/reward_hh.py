"""A reward model on HH-RLHF harmless-base pairs, on CPU, from scratch: held-out pair accuracy vs baselines.

    python benchmarks/reward_hh.py [--steps 150] [--val-size 462] [--out DIR]

No pretrained weights exist offline, so the reward model starts from nothing: a byte-level BPE
tokenizer (vocab 2048) trained on the spot on the pairs' texts, a tiny LLaMA-style decoder (2 layers,
64 wide) randomly initialized, then `finetune(..., objective="reward", method="full")` (Bradley-Terry,
scalar head on the last token) on ../shared/data/hh-rlhf/harmless-base_test.jsonl.gz prepared with
`openseason data prepare hh-rlhf ... --mode preferences`. The held-out pairs are finetune's own
val_size split (never trained on); the accuracy reported is the final checkpoint's (no selection on
the held-out pairs). Side by side on the SAME held-out pairs:

    length      "the shorter reply is the chosen one" (the direction fitted on the training pairs)
    bag-of-words  logistic regression on word-presence differences + log length (numpy, training
                  pairs only): how much lexical signal the data holds for a model of this kind

and the reward model's accuracy split by whether the chosen reply is the shorter or the longer one:
above 50% on the pairs where the chosen reply is LONGER means it learned more than "shorter is safer".
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base_test.jsonl.gz"
MODEL = dict(name="rm-tiny", family="llama", n_layer=2, n_embd=64, n_head=2, n_query_groups=2, intermediate_size=128,
             rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class="RMSNorm", norm_eps=1e-5,
             mlp_class="LLaMAMLP", tie_embeddings=False, add_bos_token=False)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+|[.!?]", text.lower())


def bag_of_words_accuracy(train: list[dict], held: list[dict], l2: float = 10.0, iters: int = 500) -> float:
    import numpy as np

    counts = Counter(w for r in train for k in ("chosen", "rejected") for w in set(_words(r[k])))
    vocab = {w: i for i, w in enumerate(w for w, c in counts.items() if c >= 5)}

    def features(text):
        v = np.zeros(len(vocab) + 1)
        for w in _words(text):
            if w in vocab:
                v[vocab[w]] = 1.0
        v[-1] = math.log1p(len(text))
        return v

    def diff(rows):
        return np.array([features(r["chosen"]) - features(r["rejected"]) for r in rows])

    x, xh = diff(train), diff(held)
    w = np.zeros(x.shape[1])
    for _ in range(iters):  # gradient descent on the logistic loss of "chosen beats rejected"
        p = 1 / (1 + np.exp(-x @ w))
        w -= 0.5 * (x.T @ (p - 1) / len(x) + l2 * w / len(x))
    return float(((xh @ w) > 0).mean())


def length_accuracy(train: list[dict], held: list[dict]) -> tuple[float, str]:
    def shorter_wins(r):
        a, b = len(r["chosen"]), len(r["rejected"])
        return 0.5 if a == b else float(a < b)

    shorter = sum(shorter_wins(r) for r in train) / len(train) >= 0.5
    acc = sum(shorter_wins(r) if shorter else 1 - shorter_wins(r) for r in held) / len(held)
    return acc, "shorter" if shorter else "longer"


def main() -> None:
    import numpy as np
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.data.preferences import PreferenceData, load_preferences
    from openseason.data.prepare import prepare
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe
    from openseason.train.finetune import finetune
    from openseason.train.objective_run import wilson

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--val-size", type=int, default=462)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="rm-hh-"))
    data = root / "hh"
    if not (data / "preferences.jsonl").exists():
        prepare("hh-rlhf", [str(HH)], data, mode="preferences", progress=False)
    records = load_preferences(data)
    texts = [m["content"] for r in records for m in r["prompt"]]
    texts += [r[k] for r in records for k in ("chosen", "rejected")]
    tokenizer = train_bpe(texts, vocab_size=2048)
    torch.manual_seed(a.seed)
    model = GPT(Config(**MODEL, block_size=a.max_length, vocab_size=tokenizer.vocab_size,
                       padded_vocab_size=(tokenizer.vocab_size + 63) // 64 * 64, eos_token_id=tokenizer.eos_id))
    model.init_weights()
    base = save_checkpoint(root / "init", model, tokenizer=tokenizer)
    t = time.time()
    res = finetune(base, data, "full", root / "rm", objective="reward", prompt_style="plain", max_steps=a.steps,
                   lr=a.lr, micro_batch_size=16, val_size=a.val_size, max_length=a.max_length, eval_every=50,
                   weight_decay=0.1, warmup_steps=20, seed=a.seed, progress=False, register=False)
    report = res["report"]
    # the same held-out pairs as finetune's split (same tokenization, same seeded permutation)
    pairs = PreferenceData(records, tokenizer, "plain", a.max_length)
    order = np.random.default_rng(a.seed).permutation(len(pairs))
    by_id = {r["id"]: r for r in records}
    held = [by_id[pairs[int(i)]["id"]] for i in order[:a.val_size]]
    train = [by_id[pairs[int(i)]["id"]] for i in order[a.val_size:]]
    n = len(held)
    from openseason.data.preferences import write_pairs
    from openseason.evaluate.reward import evaluate_reward

    scored = evaluate_reward(res["final"], write_pairs(root / "heldout", held, style="plain"), style="plain",
                             max_length=a.max_length, per_pair=True)
    right = {row["id"]: row["margin"] > 0 for row in scored["per_pair"]}
    split = {}
    for name, keep in (("chosen shorter", lambda r: len(r["chosen"]) < len(r["rejected"])),
                       ("chosen longer", lambda r: len(r["chosen"]) > len(r["rejected"]))):
        ids = [r["id"] for r in held if keep(r)]
        k = sum(right[i] for i in ids)
        split[name] = {"pairs": len(ids), "reward_model_acc": round(k / len(ids), 4),
                       "ci95": [round(c, 4) for c in wilson(k, len(ids))]}
    length_acc, direction = length_accuracy(train, held)
    bow_acc = bag_of_words_accuracy(train, held)
    rows = {"reward_model": (report["heldout_reward_acc"], report["heldout_reward_acc_ci95"]),
            f"length ({direction} reply wins)": (length_acc, wilson(round(length_acc * n), n)),
            "bag_of_words_logreg": (bow_acc, wilson(round(bow_acc * n), n))}
    print(json.dumps({"pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": n, "steps": a.steps,
                      "seconds": round(time.time() - t), "tokenization": pairs.report, "out": str(root)}))
    for name, (acc, ci) in rows.items():
        print(json.dumps({"method": name, "heldout_acc": round(acc, 4), "ci95": [round(c, 4) for c in ci]}))
    print(json.dumps({"reward_model_by_length": split, "evaluate_reward_acc": scored["accuracy"]}))


if __name__ == "__main__":
    main()
