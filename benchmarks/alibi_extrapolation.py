"""Length extrapolation: a tiny ALiBi model (MPT) and a same-size tiny rotary model trained at context 64
on the same bytes of real text, then scored on held-out text at 64, 128, 256 and 512 tokens.

Both models are the one decoder with one flag changed (alibi=True / rotary_percentage=1.0), same seed,
same batches, same optimizer. Tokens are UTF-8 bytes (vocab 256) of Dolly-15k contexts and responses
from ../shared/data (no tokenizer to download); the last 15% of rows are held out. The rotary model's
tables are built for 512 positions so it can be scored there; it has only ever seen positions < 64.
The ALiBi model keeps block_size 64 and reads past it through `GPT.extend_context` (which warns).

    .venv/bin/python benchmarks/alibi_extrapolation.py [--steps 600]

Prints a table: mean held-out loss (nats per byte) over every token of the window, and over the
window's last 64 tokens (the positions past the training length, for windows longer than 64).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from openseason.config import Config
from openseason.model import GPT

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dolly-15k" / "dolly_sample.jsonl"
TRAIN_LEN = 64
EVAL_LENS = (64, 128, 256, 512)


def load_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    rows = [json.loads(line) for line in DATA.open()]
    texts = [(r.get("context", "") + "\n" + r["response"]).strip() + "\n\n" for r in rows]
    cut = int(len(texts) * 0.85)
    train = "".join(texts[:cut]).encode("utf-8")
    held = "".join(texts[cut:]).encode("utf-8")
    return torch.tensor(list(train), dtype=torch.long), torch.tensor(list(held), dtype=torch.long)


def make(alibi: bool) -> GPT:
    common = dict(family="mpt" if alibi else "llama", vocab_size=256, n_layer=2, n_embd=64, n_head=4,
                  intermediate_size=256, norm_class="LayerNorm", mlp_class="GptNeoxMLP", bias=False,
                  norm_bias=False, tie_embeddings=True)
    if alibi:
        cfg = Config(name="tiny-alibi", block_size=TRAIN_LEN, rotary_percentage=0.0, alibi=True, **common)
    else:
        cfg = Config(name="tiny-rotary", block_size=max(EVAL_LENS), rotary_percentage=1.0, **common)
    torch.manual_seed(0)
    model = GPT(cfg)
    model.init_weights()
    if alibi:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.extend_context(max(EVAL_LENS))
    return model


def train(model: GPT, data: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(data) - TRAIN_LEN - 1, (batch,), generator=gen)
        window = torch.stack([data[s:s + TRAIN_LEN + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return loss.item()


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, length: int, max_windows: int = 48) -> tuple[float, float]:
    """(mean loss over every predicted token, mean loss over the last 64) on non-overlapping windows."""
    model.eval()
    n = min(max_windows, (len(data) - 1) // (length + 1))
    windows = torch.stack([data[i * (length + 1):(i + 1) * (length + 1)] for i in range(n)])
    total = last = 0.0
    for chunk in windows.split(8):
        logits = model(chunk[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="none").view(len(chunk), -1)
        total += float(losses.mean(1).sum())
        last += float(losses[:, -TRAIN_LEN:].mean(1).sum())
    return total / n, last / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data, held = load_bytes()
    print(f"train {len(train_data):,} bytes, held-out {len(held):,} bytes; {args.steps} steps x {args.batch} "
          f"x {TRAIN_LEN} tokens")
    results = {}
    for name, alibi in (("ALiBi (MPT)", True), ("rotary", False)):
        model = make(alibi)
        t0 = time.time()
        final = train(model, train_data, args.steps, args.batch, args.lr)
        spent = time.time() - t0
        results[name] = {L: evaluate(model, held, L) for L in EVAL_LENS}
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params:,} parameters, final train loss {final:.3f}, trained in {spent:.0f} s")
    print()
    print("| model | " + " | ".join(f"{L} tokens" for L in EVAL_LENS) + " |")
    print("|---|" + "---|" * len(EVAL_LENS))
    for name, by_len in results.items():
        print(f"| {name}: all tokens | " + " | ".join(f"{by_len[L][0]:.3f}" for L in EVAL_LENS) + " |")
        print(f"| {name}: last 64 tokens | " + " | ".join(f"{by_len[L][1]:.3f}" for L in EVAL_LENS) + " |")


if __name__ == "__main__":
    main()
