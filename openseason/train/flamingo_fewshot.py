"""OpenFlamingo few-shot classification on the synthetic image suite, offline on CPU
(benchmarks/flamingo_fewshot.py and `openseason quickstart --multimodal --flamingo-steps N`).

1. Episodes (data/episodes.py) from a suite's train split: k shots and a query, all prompted
   "Output:", answered with the query's shape OR its color, chosen at random per episode and never
   named: without shots the model can only guess which attribute is asked; the shots show it.
2. A tiny LLaMA-style decoder trained in full on the TEXT of other training episodes (images replaced
   by the bare `<image>` token, loss on every token): it learns the format and that answers keep
   naming one attribute, never what an image shows. Then frozen.
3. `finetune --method flamingo` with the frozen vision encoder: only the perceiver, the gated
   cross-attention blocks and the `<image>` / `<|endofchunk|>` rows train.
4. Greedy answers (LLM.complete with the images, the one engine) on held-out episodes built from the
   eval split only, at 0, 2 and 4 shots, before (gates closed: the decoder alone) and after.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .objective_run import wilson

TASKS = ("shape", "color")
SHOTS = (0, 2, 4)
MODEL = dict(name="flamingo-demo-lm", family="llama", block_size=128, n_layer=4, n_embd=128, n_head=4,
             n_query_groups=4, intermediate_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False,
             norm_class="RMSNorm", norm_eps=1e-5, mlp_class="LLaMAMLP", tie_embeddings=False, add_bos_token=False)
FLAMINGO = dict(xattn_every=1, perceiver_depth=2, num_latents=8)


def episode_lm(out: Path, items, seed: int, steps: int, lr: float = 3e-3) -> Path:
    """The decoder of step 2 (a full checkpoint); steps = 0 leaves it random."""
    import torch

    from ..checkpoint import save_checkpoint
    from ..config import Config
    from ..data.episodes import make_episodes
    from ..data.image_tasks import COLORS, SHAPES
    from ..data.prepare import write_style
    from ..fileio import write_jsonl_atomic
    from ..model import GPT
    from ..tokenizer import train_bpe
    from .finetune import finetune

    words = list(SHAPES) + list(COLORS)
    tok = train_bpe([f"Output: {w}" for w in words] * 20 + [" ".join(words)] * 20, vocab_size=300,
                    special_tokens=("<|endoftext|>", "<|endofchunk|>", "<image>"))
    torch.manual_seed(seed)
    model = GPT(Config(**{**MODEL, "vocab_size": tok.vocab_size, "padded_vocab_size": tok.vocab_size,
                          "eos_token_id": tok.eos_id}))
    model.init_weights()
    init = save_checkpoint(out / "init", model, tokenizer=tok)
    if not steps:
        return init
    rows = make_episodes(items, 4000, (0, 1, 2, 3, 4), seed=seed + 7, tasks=TASKS)
    for row in rows:   # images out, the bare <image> token in
        row["messages"] = [{**m, "content": " ".join("<image>" if p["type"] == "image" else p["text"]
                                                     for p in m["content"])} if isinstance(m["content"], list) else m
                           for m in row["messages"]]
    text = out / "text-episodes"
    text.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(text / "conversations.jsonl", rows)
    write_style(text, "flamingo")
    run = finetune(init, text, "full", out / "lm", max_steps=steps, micro_batch_size=16, lr=lr, warmup_steps=20,
                   seed=seed, train_on="all", progress=False, register=False, overwrite=True, eval_every=None,
                   save_every=None)
    return run["final"]


def evaluate_episodes(llm, rows: list[dict], base_dir: Path) -> dict[int, dict]:
    """Exact match of greedy answers per shot count, with 95% Wilson intervals."""
    prompts, medias, labels, shots = [], [], [], []
    stop_ids: tuple = ()
    for row in rows:
        messages = [{**m, "content": [{**p, "path": str(Path(base_dir) / p["path"])} if p.get("type") == "image"
                                      else p for p in m["content"]]} if isinstance(m["content"], list) else m
                    for m in row["messages"][:-1]]
        ids, media, _, stop_ids = llm.chat_inputs(messages)
        prompts.append(ids)
        medias.append(media)
        labels.append(row["meta"]["label"])
        shots.append(row["meta"]["shots"])
    out = llm.complete(prompts, media=medias, max_new_tokens=4, stop_token_ids=list(stop_ids))
    hits: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for completion, label, k in zip(out, labels, shots):
        hits[k][0] += int(completion.text.strip() == label)
        hits[k][1] += 1
    return {k: {"correct": c, "n": n, "accuracy": c / n, "ci95": wilson(c, n)} for k, (c, n) in sorted(hits.items())}


def flamingo_fewshot(out: Path, suite: Path, encoder: Path, *, steps: int, lm_steps: int = 300,
                     episodes: int = 3000, eval_per_shot: int = 80, lr: float = 3e-3, seed: int = 0,
                     progress: bool = False) -> dict[str, Any]:
    """Steps 1-4 of the module docstring on `suite` (a `data images` directory with train and eval
    splits) with the frozen vision checkpoint `encoder`; returns the report."""
    from ..data.episodes import make_episodes, suite_items, write_episodes
    from ..data.image_tasks import COLORS, SHAPES
    from ..generation.llm import LLM
    from ..peft import apply, count_trainable
    from .finetune import finetune

    out, suite = Path(out), Path(suite)
    timings: dict[str, float] = {}
    t = time.time()
    data = write_episodes(suite / "train", out / "episodes", TASKS, n=episodes, shots=(0, 1, 2, 3, 4), seed=seed)
    eval_rows = [r for k in SHOTS for r in make_episodes(suite_items(suite / "eval", TASKS), eval_per_shot, (k,),
                                                         seed=1000 + k, tasks=TASKS)]
    base = episode_lm(out / "lm", suite_items(suite / "train", TASKS), seed, lm_steps)
    timings["data_and_lm_s"] = time.time() - t

    t = time.time()   # the same model before training: gates at zero, the decoder alone answers
    before = LLM.load(base)
    media_id, eoc_id = before.tokenizer.add_special_tokens(["<image>", "<|endofchunk|>"])
    apply(before.model, "flamingo", vision=str(encoder), media_token_id=media_id, token_ids=[media_id, eoc_id],
          new_token_ids=[], every=FLAMINGO["xattn_every"], perceiver_depth=FLAMINGO["perceiver_depth"],
          num_latents=FLAMINGO["num_latents"])
    before_acc = evaluate_episodes(before, eval_rows, suite / "eval")
    timings["before_s"] = time.time() - t

    t = time.time()
    run = finetune(base, data, "flamingo", out / "run", vision=str(encoder), max_steps=steps, micro_batch_size=8,
                   lr=lr, warmup_steps=20, seed=seed, progress=progress, register=False, overwrite=True,
                   eval_every=None, save_every=None, **FLAMINGO)
    timings["train_s"] = time.time() - t
    t = time.time()
    llm = LLM.load(run["final"])
    after = evaluate_episodes(llm, eval_rows, suite / "eval")
    timings["after_s"] = time.time() - t
    return {"checkpoint": str(run["final"]), "steps": run["steps"], "final_loss": run["final_loss"],
            "lm_steps": lm_steps, "trainable_parameters": count_trainable(llm.model),
            "parameters": sum(p.numel() for p in llm.model.parameters()),
            "chance": sum(1 / n for n in (len(SHAPES), len(COLORS))) / len(TASKS),
            "before": before_acc, "after": after, "timings": timings}
