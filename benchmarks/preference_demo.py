"""DPO on a verifiable task, on CPU: does preference tuning raise exact match over SFT alone?

    python benchmarks/preference_demo.py [--sft-steps 220] [--dpo-steps 60] [--eval-items 100] [--rejected near-miss|own] [--out DIR]

1. A tiny LLaMA-style model (byte-level tokenizer, as the quickstart's) is trained from scratch with
   SFT on the built-in `convert` family ("Convert km to m: 47" -> "47000") for --sft-steps steps.
2. Preference pairs on other training items: chosen = the right answer, rejected = a near miss
   (one zero too many or too few), or with --rejected own the SFT model's own wrong greedy answer
   where it has one (on-policy negatives; an undertrained model mostly miscopies the operand).
3. DPO (full, beta 0.1) from the SFT checkpoint for --dpo-steps steps; as a control, SFT continues
   from the same checkpoint for the same number of steps on the chosen answers.
   With --grpo-steps, GRPO with `exact_match_reward` from the same checkpoint as well.
4. Greedy exact match on held-out items (instructions disjoint from all training items) for the
   SFT checkpoint, SFT + DPO and SFT + more SFT, with 95% Wilson intervals.

Everything goes through the public `finetune()`; prints one JSON line per stage and a summary.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILY = "convert"
MODEL = dict(name="prefdemo-tiny", family="llama", block_size=48, n_layer=2, n_embd=96, n_head=4, n_query_groups=4,
             intermediate_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class="RMSNorm",
             norm_eps=1e-5, mlp_class="LLaMAMLP", tie_embeddings=False, add_bos_token=False)


def near_miss(answer: str, rng: random.Random) -> str:
    """One zero too many or too few (never below the two-digit operand)."""
    if answer.endswith("000") or (answer.endswith("0") and rng.random() < 0.5 and len(answer) > 3):
        return answer[:-1]
    return answer + "0"


def build(root: Path, n_sft: int, n_pairs: int, n_eval: int, seed: int):
    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.data.preferences import write_pairs
    from openseason.data.tasks import split_heldout
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe
    from openseason.train.quickstart import _write_prepared

    train_items, held = split_heldout(FAMILY, n_sft + n_pairs, n_eval, seed=seed)
    sft_items, pair_items = train_items[:n_sft], train_items[n_sft:]
    tokenizer = train_bpe((r["messages"][0]["content"] for r in sft_items[:50]), vocab_size=257)
    import torch

    torch.manual_seed(seed)
    model = GPT(Config(**MODEL, vocab_size=tokenizer.vocab_size, padded_vocab_size=264, eos_token_id=tokenizer.eos_id))
    model.init_weights()
    base = save_checkpoint(root / "init", model, tokenizer=tokenizer)
    sft_dir = _write_prepared(root / "sft-data", sft_items)
    more_dir = _write_prepared(root / "more-sft-data", pair_items)
    rng = random.Random(seed)
    pairs = [{"id": r["id"], "source": "tasks", "prompt": r["messages"][:1], "chosen": r["messages"][1]["content"],
              "rejected": near_miss(r["messages"][1]["content"], rng), "meta": {}} for r in pair_items]
    pairs_dir = write_pairs(root / "pairs", pairs, style="plain")
    return base, sft_dir, more_dir, pairs_dir, held, tokenizer


def own_mistakes(checkpoint, pairs_dir: Path, seed: int = 0) -> dict:
    """Rewrite the pairs' rejected answers as the SFT model's own greedy answers where those are wrong
    (on-policy negatives); where it is right, the near miss stays. Returns counts."""
    from openseason.checkpoint import load_model
    from openseason.data.preferences import load_preferences, write_pairs
    from openseason.generation import SamplingParams, generate_ids
    from openseason.prompts import encode_chat
    from openseason.tokenizer import Tokenizer

    model = load_model(checkpoint).eval()
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    records = load_preferences(pairs_dir)
    outs = generate_ids(model, [encode_chat(r["prompt"], tokenizer, "plain") for r in records],
                        SamplingParams(max_new_tokens=8), tokenizer=tokenizer)
    own = 0
    for r, o in zip(records, outs):
        answer = o.text.strip()
        if answer and answer != r["chosen"]:
            r["rejected"], own = answer, own + 1
    write_pairs(pairs_dir, records, style="plain")
    return {"pairs": len(records), "rejected_own_mistake": own, "rejected_near_miss": len(records) - own}


def score(checkpoint, held) -> dict:
    from openseason.checkpoint import load_model
    from openseason.tokenizer import Tokenizer
    from openseason.train.objective_run import wilson
    from openseason.train.quickstart import exact_match

    model = load_model(checkpoint)
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    em = exact_match(model, tokenizer, held, "plain", max_new_tokens=8)
    k = round(em["exact_match"] * em["n"])
    return {"exact_match": em["exact_match"], "n": em["n"], "ci95": wilson(k, em["n"]), "examples": em["examples"][:3]}


def run(root: Path, *, sft_steps: int, dpo_steps: int, n_eval: int, seed: int = 0, beta: float = 0.1,
        n_sft: int = 300, n_pairs: int = 130, dpo_lr: float = 1e-4, batch: int = 16, rejected: str = "near-miss", grpo_steps: int = 0) -> dict:
    from openseason.train.finetune import finetune

    common = dict(progress=False, register=False, seed=seed, micro_batch_size=batch, val_size=8, max_length=48,
                  warmup_steps=0)
    base, sft_dir, more_dir, pairs_dir, held, _ = build(root, n_sft, n_pairs, n_eval, seed)
    out, t = {}, time.time()
    sft = finetune(base, sft_dir, "full", root / "sft", max_steps=sft_steps, lr=3e-3, **common)
    out["sft"] = {**score(sft["final"], held), "seconds": round(time.time() - t, 1)}
    if rejected == "own":
        out["pairs"] = own_mistakes(sft["final"], pairs_dir)
    t = time.time()
    dpo = finetune(sft["final"], pairs_dir, "full", root / "dpo", objective="dpo", beta=beta, max_steps=dpo_steps,
                   lr=dpo_lr, **common)
    out["sft+dpo"] = {**score(dpo["final"], held), "seconds": round(time.time() - t, 1),
                      "heldout_reward_acc": dpo["report"].get("heldout_reward_acc")}
    t = time.time()
    more = finetune(sft["final"], more_dir, "full", root / "more", max_steps=dpo_steps, lr=dpo_lr, **common)
    out["sft+sft"] = {**score(more["final"], held), "seconds": round(time.time() - t, 1)}
    if grpo_steps:
        t = time.time()
        grpo = finetune(sft["final"], more_dir, "full", root / "grpo", objective="grpo", num_generations=4,
                        reward="openseason.train.objectives.grpo:exact_match_reward", max_new_tokens=8,
                        max_steps=grpo_steps, lr=dpo_lr, **{**common, "micro_batch_size": 4, "val_size": 0})
        out["sft+grpo"] = {**score(grpo["final"], held), "seconds": round(time.time() - t, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft-steps", type=int, default=220)
    p.add_argument("--dpo-steps", type=int, default=60)
    p.add_argument("--eval-items", type=int, default=100)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--dpo-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grpo-steps", type=int, default=0,
                   help="also run GRPO (exact-match reward, 4 samples per prompt, lr = --dpo-lr) from the SFT "
                        "checkpoint on the pair items' prompts for this many steps")
    p.add_argument("--rejected", choices=["near-miss", "own"], default="near-miss",
                   help="rejected answer: a near miss (one zero off), or the SFT model's own wrong greedy answer "
                        "where it has one (near miss elsewhere)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="prefdemo-"))
    import torch

    print(json.dumps({"torch_threads": torch.get_num_threads(), "out": str(root)}))
    res = run(root, sft_steps=a.sft_steps, dpo_steps=a.dpo_steps, n_eval=a.eval_items, seed=a.seed, beta=a.beta,
              dpo_lr=a.dpo_lr, rejected=a.rejected,
              grpo_steps=a.grpo_steps)
    for stage, row in res.items():
        print(json.dumps({"stage": stage, **row}))
    print(json.dumps({"summary": {k: v["exact_match"] for k, v in res.items() if "exact_match" in v}}))


if __name__ == "__main__":
    main()
