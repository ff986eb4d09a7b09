"""A verifiable preference-tuning demonstration on CPU: SFT plateaus on a systematic error, DPO and GRPO fix it.

The task is the built-in `convert` family ("Convert cm to mm: 47" -> "470"). The SFT demonstrations
come from a confused demonstrator: on the two x10 unit pairs (cm -> mm, dm -> cm) it writes one zero
too many (x100) in `confusion` (0.8) of its answers, a systematic, near-miss error like a labeler's
habit; every other answer is right. A tiny LLaMA-style model trained from scratch on these
demonstrations learns to copy the operand and the right zeros for the other units, and learns the
demonstrator's mistake for the x10 units: greedy exact match plateaus near 1 - (share of x10 items),
and more SFT on the same demonstrations cannot move it.

Preference pairs then come from a verifier on other training prompts: chosen = the right answer,
rejected = the SFT model's own most likely wrong answer (on-policy): its greedy answer where that is
wrong, else the likelier of the two near misses (one zero fewer / one more) under the model.
From the SFT checkpoint (the same steps and learning rate for every arm):

    dpo        --objective dpo --sft-weight W   (RPO: DPO plus W x NLL of the chosen answers; W = 0 is plain DPO)
    grpo       --objective grpo --reward exact_match_reward, num_generations samples per prompt at temperature 1
    sft-demos  control: more SFT on the demonstrations (the "SFT alone for the same steps")
    sft-chosen control: SFT on the verifier's chosen answers of the pair prompts

and each is scored by greedy exact match on held-out items whose instructions appear in no training
item. Everything runs through the public `finetune()`; `run_demo` returns the scores (used by
benchmarks/preference_demo.py over seeds and by the test suite at one seed).
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Optional

import torch

FAMILY = "convert"
CONFUSED_UNITS = ("cm to mm", "dm to cm")  # the x10 unit pairs the demonstrator confuses with x100
STYLE = "plain"
# The demonstration's tiny model (not a released config): 2 layers, 96 wide, byte-level vocabulary.
DEMO_MODEL = dict(name="prefdemo-tiny", family="llama", block_size=32, n_layer=2, n_embd=96, n_head=4, n_query_groups=4,
                  intermediate_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False,
                  norm_class="RMSNorm", norm_eps=1e-5, mlp_class="LLaMAMLP", tie_embeddings=False,
                  add_bos_token=False)
EXACT_MATCH = "openseason.train.objectives.grpo:exact_match_reward"


def is_confused(record: dict) -> bool:
    return any(f" {units}:" in record["messages"][0]["content"] for units in CONFUSED_UNITS)


def confused_demonstrations(records: list[dict], confusion: float, seed: int) -> list[dict]:
    """The records with the x10 answers written as x100 (one zero too many) with probability `confusion`."""
    rng = random.Random(f"{seed}-demonstrator")
    out = []
    for r in records:
        user, answer = r["messages"][0], r["messages"][1]["content"]
        if is_confused(r) and rng.random() < confusion:
            answer += "0"
        out.append({**r, "messages": [user, {"role": "assistant", "content": answer}]})
    return out


@torch.no_grad()
def _answer_logps(model, tokenizer, prompt: list[dict], answers: list[str]) -> list[float]:
    from ..data.sft import collate, tokenize_conversation
    from .objectives.logps import sequence_logps

    examples = [tokenize_conversation(prompt + [{"role": "assistant", "content": a}], tokenizer, STYLE, 64)
                for a in answers]
    batch = collate(examples, tokenizer.pad_id or 0, 64)
    return sequence_logps(model, batch)[0].tolist()


def on_policy_pairs(checkpoint, records: list[dict]) -> tuple[list[dict], dict]:
    """Verifier pairs: chosen = the right answer, rejected = the model's most likely wrong answer."""
    from ..checkpoint import load_model
    from ..generation import SamplingParams, generate_ids
    from ..prompts import encode_chat
    from ..tokenizer import Tokenizer

    model = load_model(checkpoint).eval()
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    outs = generate_ids(model, [encode_chat(r["messages"][:1], tokenizer, STYLE) for r in records],
                        SamplingParams(max_new_tokens=8), tokenizer=tokenizer)
    pairs, counts = [], {"greedy_wrong": 0, "likelier_near_miss": 0}
    for r, o in zip(records, outs):
        prompt, right = r["messages"][:1], r["messages"][1]["content"]
        greedy = o.text.strip()
        if greedy != right:
            rejected, counts["greedy_wrong"] = greedy, counts["greedy_wrong"] + 1
        else:
            misses = [right[:-1], right + "0"]
            scores = _answer_logps(model, tokenizer, prompt, misses)
            rejected, counts["likelier_near_miss"] = misses[scores.index(max(scores))], counts["likelier_near_miss"] + 1
        pairs.append({"id": r["id"], "source": "openseason.data.tasks", "prompt": prompt, "chosen": right,
                      "rejected": rejected, "meta": {"family": FAMILY}})
    return pairs, counts


def score(checkpoint, held: list[dict]) -> dict:
    """Greedy exact match on `held` (all, the confused x10 units, the others) with a 95% Wilson interval."""
    from ..checkpoint import load_model
    from ..generation import SamplingParams, generate_ids
    from ..prompts import encode_chat
    from ..tokenizer import Tokenizer
    from .objective_run import wilson

    model = load_model(checkpoint).eval()
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    outs = generate_ids(model, [encode_chat(r["messages"][:1], tokenizer, STYLE) for r in held],
                        SamplingParams(max_new_tokens=8), tokenizer=tokenizer)
    hits = [o.text.strip() == r["messages"][1]["content"] for o, r in zip(outs, held)]
    k, n = sum(hits), len(hits)

    def part(flag: bool) -> float:
        sub = [h for h, r in zip(hits, held) if is_confused(r) == flag]
        return sum(sub) / max(1, len(sub))

    return {"exact_match": k / n, "n": n, "ci95": wilson(k, n), "x10_units": part(True), "other_units": part(False)}


def run_demo(root, *, seed: int = 0, n_sft: int = 300, n_pairs: int = 100, n_eval: int = 200,
             confusion: float = 0.8, sft_steps: int = 300, sft_lr: float = 3e-3, steps: int = 40, lr: float = 1e-4,
             beta: float = 0.1, sft_weight: float = 1.0, num_generations: int = 8, arms=("dpo", "grpo"),
             threads: Optional[int] = 1) -> dict:
    """SFT on confused demonstrations, then each arm in `arms` (dpo, dpo-plain, grpo, sft-demos,
    sft-chosen) for `steps` steps at `lr` from the SFT checkpoint; returns {stage: score + seconds}.
    With n_eval 200 the `convert` family (540 distinct instructions) leaves 40 pair prompts."""
    previous = torch.get_num_threads()
    if threads:  # one thread: a seed's result does not depend on how many cores run it
        torch.set_num_threads(threads)
    try:
        return _run(Path(root), seed, n_sft, n_pairs, n_eval, confusion, sft_steps, sft_lr, steps, lr, beta,
                    sft_weight, num_generations, arms)
    finally:
        torch.set_num_threads(previous)


def _run(root: Path, seed, n_sft, n_pairs, n_eval, confusion, sft_steps, sft_lr, steps, lr, beta, sft_weight,
         num_generations, arms) -> dict:
    from ..checkpoint import save_checkpoint
    from ..config import Config
    from ..data.preferences import write_pairs
    from ..data.tasks import split_heldout
    from ..model import GPT
    from ..tokenizer import train_bpe
    from .finetune import finetune
    from .quickstart import _write_prepared

    train_items, held = split_heldout(FAMILY, n_sft + n_pairs, n_eval, seed=seed)
    demos = confused_demonstrations(train_items[:n_sft], confusion, seed)
    pair_items = train_items[n_sft:]
    tokenizer = train_bpe((r["messages"][0]["content"] for r in demos[:50]), vocab_size=257)  # bytes only
    torch.manual_seed(seed)
    model = GPT(Config(**DEMO_MODEL, vocab_size=tokenizer.vocab_size, padded_vocab_size=264,
                       eos_token_id=tokenizer.eos_id))
    model.init_weights()
    base = save_checkpoint(root / "init", model, tokenizer=tokenizer)
    demo_dir = _write_prepared(root / "demonstrations", demos)
    common = dict(progress=False, register=False, seed=seed, val_size=0, max_length=32, warmup_steps=0)

    out: dict = {}
    t = time.time()
    sft = finetune(base, demo_dir, "full", root / "sft", max_steps=sft_steps, lr=sft_lr, micro_batch_size=16,
                   **common)["final"]
    out["sft"] = {**score(sft, held), "seconds": round(time.time() - t, 1)}
    pairs, counts = on_policy_pairs(sft, pair_items)
    out["pairs"] = {"pairs": len(pairs), **counts}
    for arm in arms:
        t = time.time()
        if arm in ("dpo", "dpo-plain"):
            pairs_dir = write_pairs(root / "pairs", pairs, style=STYLE)
            res = finetune(sft, pairs_dir, "full", root / arm, objective="dpo", beta=beta, max_steps=steps, lr=lr,
                           sft_weight=sft_weight if arm == "dpo" else 0.0, micro_batch_size=16, **common)
        elif arm == "grpo":
            prompts_dir = _write_prepared(root / "pair-prompts", pair_items)
            res = finetune(sft, prompts_dir, "full", root / arm, objective="grpo", reward=EXACT_MATCH,
                           num_generations=num_generations, max_new_tokens=8, temperature=1.0, max_steps=steps,
                           lr=lr, micro_batch_size=4, **common)
        elif arm == "sft-demos":
            res = finetune(sft, demo_dir, "full", root / arm, max_steps=steps, lr=lr, micro_batch_size=16, **common)
        elif arm == "sft-chosen":
            chosen_dir = _write_prepared(root / "chosen", pair_items)
            res = finetune(sft, chosen_dir, "full", root / arm, max_steps=steps, lr=lr, micro_batch_size=16, **common)
        else:
            raise ValueError(f"unknown arm {arm!r}")
        out[arm] = {**score(res["final"], held), "seconds": round(time.time() - t, 1)}
    return out
