"""Distilling step by step on CPU: label-only (alpha = 1.0) vs step by step (alpha = 0.5) by data fraction.

    PYTHONPATH=. python benchmarks/distill.py --out /tmp/distill-bench
    PYTHONPATH=. python benchmarks/distill.py --out /tmp/d --rationales RUN_OF_SYNTH_RATIONALES --checkpoint CKPT

Built-in data: the `story` word problems of openseason.data.tasks ("Tom has 3 apples. Tom buys 4 more
and gives 2 away. How many apples now?" -> "5", rationale "3 + 4 = 7. 7 - 2 = 5."), rationales
computed, not generated; held-out items never appear in training. A tiny decoder (byte-level, 4
layers, 128 wide) is initialized once and finetuned (full) from it through the public
`finetune(..., objective="distill")` on 10/25/50/100% of the training rows, the same steps for every
run; held-out label accuracy is measured with the label prefix only (`evaluate.distill`). With
--rationales (the output directory of `openseason synth rationales`) and --checkpoint, the same runs
use a real teacher's rationales and a real student; a share of the rows is held out for evaluation.

Writes OUT/results.json, OUT/results.md and OUT/accuracy_vs_fraction.png, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

TINY = dict(name="distill-tiny", family="llama", block_size=128, n_layer=4, n_embd=128, n_head=4, n_query_groups=4,
            intermediate_size=352, rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class="RMSNorm",
            norm_eps=1e-5, mlp_class="LLaMAMLP", tie_embeddings=False, add_bos_token=False)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def builtin_data(out: Path, n_train: int, n_eval: int, seed: int):
    from openseason.data.tasks import rationale_rows

    evaluation = rationale_rows(n_eval, seed=seed + 1000)
    train = rationale_rows(n_train, seed=seed, exclude={r["input"] for r in evaluation})
    return train, evaluation


def teacher_data(directory: Path, n_eval: int, seed: int):
    from openseason.train.objectives.distill import load_rationale_rows

    rows = load_rationale_rows(directory)
    random.Random(seed).shuffle(rows)
    return rows[n_eval:], rows[:n_eval]


def tiny_base(out: Path, rows: list[dict], seed: int) -> Path:
    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe

    torch.manual_seed(seed)
    tokenizer = train_bpe((r["input"] for r in rows[:100]), vocab_size=257)  # bytes + <|endoftext|>
    config = Config(**TINY, vocab_size=tokenizer.vocab_size, padded_vocab_size=264, eos_token_id=tokenizer.eos_id)
    model = GPT(config)
    model.init_weights()
    return save_checkpoint(out / "init", model, tokenizer=tokenizer,
                           run_card={"note": "randomly initialized distill benchmark model", "prompt_style": "plain"})


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for alpha in sorted({r["alpha"] for r in results}, reverse=True):
        pts = sorted((r["fraction"], r["label_accuracy"]) for r in results if r["alpha"] == alpha)
        name = "label only (alpha = 1.0)" if alpha == 1.0 else f"step by step (alpha = {alpha:g})"
        ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("% of the training set")
    ax.set_ylabel("held-out label accuracy (%)")
    ax.set_title("Distilling step by step, tiny decoder on word problems")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rationales", help="a `synth rationales` output directory (default: built-in word problems)")
    ap.add_argument("--checkpoint", help="the student (default: a tiny randomly initialized decoder)")
    ap.add_argument("--method", default="full")
    ap.add_argument("--train", type=int, default=2000, help="built-in training rows (100%%)")
    ap.add_argument("--eval", type=int, default=300, help="held-out rows")
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--alphas", default="1.0,0.5")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--micro-batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from openseason.evaluate.distill import label_accuracy
    from openseason.generation.llm import LLM
    from openseason.train.finetune import finetune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny matmuls on a shared machine: one thread is fastest and repeatable
    load0 = os.getloadavg()
    if args.rationales:
        train_rows, eval_rows = teacher_data(Path(args.rationales), args.eval, args.seed)
    else:
        train_rows, eval_rows = builtin_data(out, args.train, args.eval, args.seed)
    base = Path(args.checkpoint) if args.checkpoint else tiny_base(out, train_rows + eval_rows, args.seed)
    order = list(range(len(train_rows)))
    random.Random(args.seed).shuffle(order)
    results = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        n = max(1, round(fraction * len(train_rows)))
        data = write_rows(out / "data" / f"frac-{fraction:g}" / "rationales.jsonl", [train_rows[i] for i in order[:n]])
        for alpha in [float(a) for a in args.alphas.split(",")]:
            run = out / "runs" / f"frac-{fraction:g}-alpha-{alpha:g}"
            t = time.time()
            result = finetune(base, data.parent, args.method, run, objective="distill", alpha=alpha,
                              max_steps=args.steps, micro_batch_size=args.micro_batch_size, lr=args.lr,
                              warmup_steps=max(1, args.steps // 10), val_size=0, max_length=128, seed=args.seed,
                              prompt_style="plain", progress=False, register=False, overwrite=True)
            seconds = time.time() - t
            llm = LLM.load(result["final"])
            acc = label_accuracy(llm.model, llm.tokenizer, "plain", eval_rows, max_new_tokens=6)
            row = {"fraction": fraction, "train_rows": n, "alpha": alpha, "steps": args.steps,
                   "label_accuracy": acc["label_accuracy"], "correct": acc["correct"], "n_eval": acc["n"],
                   "final_loss": result["final_loss"], "train_seconds": round(seconds, 1),
                   "sample": acc["items"][0]}
            results.append(row)
            print(f"fraction {fraction:>5g} ({n:>5} rows)  alpha {alpha:g}  label accuracy "
                  f"{acc['correct']}/{acc['n']} = {100 * acc['label_accuracy']:.1f}%  ({seconds:.0f} s)", flush=True)
    load1 = os.getloadavg()
    plot_path = plot(results, out / "accuracy_vs_fraction.png")
    lines = ["| fraction | train rows | label only (alpha 1.0) | step by step (alpha 0.5) |", "|---|---|---|---|"]
    for fraction in sorted({r["fraction"] for r in results}):
        cells = {r["alpha"]: r for r in results if r["fraction"] == fraction}
        fmt = lambda r: f"{100 * r['label_accuracy']:.1f}% ({r['correct']}/{r['n_eval']})" if r else "-"  # noqa: E731
        lines.append(f"| {100 * fraction:g}% | {cells[next(iter(cells))]['train_rows']} | {fmt(cells.get(1.0))} "
                     f"| {fmt(cells.get(0.5))} |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "load_before": load0, "load_after": load1,
                                                  "results": results, "plot": str(plot_path)}, indent=2))
    print(table)
    print(f"load average before {load0}, after {load1}; plot {plot_path}")


if __name__ == "__main__":
    main()
