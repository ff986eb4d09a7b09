"""OpenFlamingo on CPU: few-shot classification of held-out synthetic images with 0, 2 and 4 in-context
examples.

    python benchmarks/flamingo_fewshot.py [--images 600] [--steps 400] [--eval 120] [--vision ENCODER] [--out DIR]

1. The synthetic image suite (shape scenes, 32 px): train and held-out eval splits (`write_suite`).
2. Episodes (`data/episodes.py`): k shots and a query, all prompted "Output:", answered with the
   query's shape OR its color, chosen at random per episode and never named: without shots the model
   can only guess which attribute is asked; the shots show it. Training episodes have k in 0..4.
3. A frozen vision tower (`--vision`, else a randomly initialized tiny CLIP ViT, frozen: its features
   are random projections of the pixels) and a frozen tiny LLaMA-style decoder: trained in full for
   `--lm-steps` on the TEXT of other training episodes (images replaced by the bare `<image>` token:
   it learns the format and that answers keep naming one attribute, never what an image shows), or
   random with --lm-steps 0. `finetune --method flamingo` then trains only the perceiver, the gated
   cross-attention blocks and the `<image>` / `<|endofchunk|>` rows.
4. Greedy answers (LLM.complete with the images, the one engine) on held-out episodes built from eval
   images only, at 0, 2 and 4 shots; exact match with 95% Wilson intervals, next to chance (a uniform
   guess among the asked attribute's classes) and to the same model before training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("shape", "color")
MODEL = dict(name="flamingo-demo-lm", family="llama", block_size=128, n_layer=4, n_embd=128, n_head=4,
             n_query_groups=4, intermediate_size=256, rotary_percentage=1.0, parallel_residual=False, bias=False,
             norm_class="RMSNorm", norm_eps=1e-5, mlp_class="LLaMAMLP", tie_embeddings=False, add_bos_token=False)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def build_base(out: Path, items, seed: int, lm_steps: int, lr: float) -> Path:
    """The frozen decoder: random weights, or (lm_steps > 0) trained in full on the TEXT of training
    episodes (every image replaced by the bare <image> token) so that it knows the episode format and
    which attribute earlier answers name, but has never seen a pixel."""
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.data.episodes import make_episodes
    from openseason.data.image_tasks import COLORS, SHAPES
    from openseason.data.prepare import write_style
    from openseason.fileio import write_jsonl_atomic
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe
    from openseason.train.finetune import finetune

    words = list(SHAPES) + list(COLORS)
    tok = train_bpe([f"Output: {w}" for w in words] * 20 + [" ".join(words)] * 20, vocab_size=300,
                    special_tokens=("<|endoftext|>", "<|endofchunk|>", "<image>"))
    torch.manual_seed(seed)
    model = GPT(Config(**{**MODEL, "vocab_size": tok.vocab_size, "padded_vocab_size": tok.vocab_size,
                          "eos_token_id": tok.eos_id}))
    model.init_weights()
    init = save_checkpoint(out / "init", model, tokenizer=tok)
    if not lm_steps:
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
    run = finetune(init, text, "full", out / "lm", max_steps=lm_steps, micro_batch_size=16, lr=lr, warmup_steps=20,
                   seed=seed, progress=False, register=False, overwrite=True, eval_every=None, save_every=None)
    return run["final"]


def vision_encoder(out: Path, given, seed: int) -> Path:
    if given:
        return Path(given)
    import torch

    from openseason.vision import VisionConfig, VisionEncoder, save_vision_encoder

    torch.manual_seed(seed)
    return save_vision_encoder(out, VisionEncoder(VisionConfig.named("tiny-clip-vit")),
                               run_card={"note": "random init, frozen (flamingo_fewshot.py)"})


def evaluate(llm, rows, base_dir: Path) -> dict:
    """Exact match of greedy answers, per shot count."""
    from collections import defaultdict

    prompts, medias, labels, shots = [], [], [], []
    for row in rows:
        messages = [{**m, "content": [{**p, "path": str(base_dir / p["path"])} if p.get("type") == "image" else p
                                      for p in m["content"]]} if isinstance(m["content"], list) else m
                    for m in row["messages"][:-1]]
        ids, media, _, stop_ids = llm.chat_inputs(messages)
        prompts.append(ids)
        medias.append(media)
        labels.append(row["meta"]["label"])
        shots.append(row["meta"]["shots"])
    out = llm.complete(prompts, media=medias, max_new_tokens=4, stop_token_ids=list(stop_ids))
    hits = defaultdict(lambda: [0, 0])
    for completion, label, k in zip(out, labels, shots):
        hits[k][0] += int(completion.text.strip() == label)
        hits[k][1] += 1
    return {k: {"correct": c, "n": n, "accuracy": c / n, "ci95": wilson(c, n)} for k, (c, n) in sorted(hits.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=600, help="training images (eval: a fifth)")
    ap.add_argument("--episodes", type=int, default=3000, help="training episodes")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval", type=int, default=120, help="held-out episodes per shot count")
    ap.add_argument("--vision", default=None, help="a vision checkpoint (default: a random frozen tiny CLIP ViT)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Flamingo learning rate")
    ap.add_argument("--lm-steps", type=int, default=300,
                    help="train the decoder on the episodes' text first (0: a random frozen decoder)")
    ap.add_argument("--lm-lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from openseason.data.episodes import make_episodes, suite_items, write_episodes
    from openseason.data.image_tasks import COLORS, SHAPES, write_suite
    from openseason.generation.llm import LLM
    from openseason.peft import apply, count_trainable
    from openseason.train.finetune import finetune

    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.out or tempfile.mkdtemp(prefix="flamingo-fewshot-"))
    t0 = time.time()
    suite = root / "suite"
    if not (suite / "suite.json").exists():
        write_suite(suite, n=args.images, n_eval=max(40, args.images // 5), size=32, families=["shape"], seed=args.seed)
    data = write_episodes(suite / "train", root / "episodes", TASKS, n=args.episodes, shots=(0, 1, 2, 3, 4),
                          seed=args.seed)
    eval_items = suite_items(suite / "eval", TASKS)
    eval_rows = [r for k in (0, 2, 4) for r in make_episodes(eval_items, args.eval, (k,), seed=1000 + k, tasks=TASKS)]
    base = build_base(root / "base", suite_items(suite / "train", TASKS), args.seed, args.lm_steps, args.lm_lr)
    encoder = vision_encoder(root / "encoder", args.vision, args.seed)
    print(json.dumps({"stage": "data", "train_episodes": args.episodes, "eval_episodes": len(eval_rows),
                      "seconds": round(time.time() - t0, 1)}), flush=True)

    # the same Flamingo model before training: gates at zero, the plain decoder answering
    before = LLM.load(base)
    media_id, eoc_id = before.tokenizer.add_special_tokens(["<image>", "<|endofchunk|>"])
    apply(before.model, "flamingo", vision=str(encoder), media_token_id=media_id, token_ids=[media_id, eoc_id],
          new_token_ids=[], perceiver_depth=2, num_latents=8)
    before_acc = evaluate(before, eval_rows, suite / "eval")

    t1 = time.time()
    run = finetune(base, data, "flamingo", root / "run", vision=str(encoder), max_steps=args.steps,
                   micro_batch_size=8, grad_accum=1, lr=args.lr, warmup_steps=20, seed=args.seed, xattn_every=1,
                   perceiver_depth=2, num_latents=8, progress=False, register=False, overwrite=True,
                   eval_every=None, save_every=None)
    train_s = time.time() - t1
    llm = LLM.load(run["final"])
    after = evaluate(llm, eval_rows, suite / "eval")
    chance = sum(1 / n for n in (len(SHAPES), len(COLORS))) / 2
    summary = {"stage": "summary", "chance": round(chance, 3), "train_steps": args.steps,
               "train_seconds": round(train_s, 1), "trainable_parameters": count_trainable(llm.model),
               "parameters": sum(p.numel() for p in llm.model.parameters()),
               "vision": "given" if args.vision else "random frozen tiny-clip-vit", "lm_steps": args.lm_steps,
               "before": {k: round(v["accuracy"], 3) for k, v in before_acc.items()},
               "after": {k: {"accuracy": round(v["accuracy"], 3), "ci95": [round(x, 3) for x in v["ci95"]],
                             "n": v["n"]} for k, v in after.items()},
               "seconds": round(time.time() - t0, 1), "out": str(root)}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
