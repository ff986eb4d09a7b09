"""Pretraining throughput: openseason's training step vs transformers' GPTNeoXForCausalLM in a plain loop.

    python benchmarks/pretrain.py                                   # CPU: pythia-14m and pythia-70m, fp32
    python benchmarks/pretrain.py --device cuda --models pythia-160m pythia-1b --batch 8 --seq-len 2048

Both sides start from the same random weights (ours from a named config, transformers' twin through
the production key map), train on the same token batches with AdamW (betas 0.9/0.95, weight decay
0.1, clip 1.0), one warm-up step each, then alternate timed steps. Ours runs what the training loop
runs per step (`token_loss_sum`: chunked lm_head + cross-entropy over the target tokens only);
transformers runs `model(input_ids, labels=labels).loss`. tokens/s = batch x seq_len / step time.
On a GPU both use bf16 autocast and the script also prints MFU (6N + 12LHQT FLOPs per token against
the GPU's dense bf16 peak).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import hf_twin, sync  # noqa: E402  (same-weights transformers twin)
from openseason.config import Config  # noqa: E402
from openseason.model import GPT  # noqa: E402
from openseason.train.loop import token_loss_sum  # noqa: E402
from openseason.train.pretrain import flops_per_token, peak_flops  # noqa: E402
from openseason.train.schedule import make_optimizer  # noqa: E402


def bench(name: str, args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = Config.from_name(name)
    ours = GPT(config)
    ours.init_weights()
    hf = hf_twin(ours, "cpu", torch.float32).to(device).train()
    ours = ours.to(device).train()
    ours.init_rope(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext)
    opt_ours = make_optimizer(ours, lr=1e-4, weight_decay=0.1)
    opt_hf = make_optimizer(hf, lr=1e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
               for _ in range(args.steps + 1)]

    def step_ours(tokens):
        x = tokens[:, :-1].to(device)
        batch = {"input_ids": x, "labels": x}  # aligned labels: the same targets transformers' loss uses
        with (autocast() if callable(autocast) else autocast):
            loss, n = token_loss_sum(ours, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return float(loss.detach() / n)

    def step_hf(tokens):
        x = tokens[:, :-1].to(device)
        with (autocast() if callable(autocast) else autocast):
            loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return float(loss)

    first = (step_ours(batches[0]), step_hf(batches[0]))  # warm-up; same weights -> same first loss
    times = {"openseason": [], "transformers": []}
    for tokens in batches[1:]:
        for label, fn in (("transformers", step_hf), ("openseason", step_ours)):
            sync(device)
            t = time.perf_counter()
            fn(tokens)
            sync(device)
            times[label].append(time.perf_counter() - t)
    n_tokens = args.batch * args.seq_len
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    print(f"{name}: batch {args.batch} x {args.seq_len} tokens, {args.steps} timed steps, device {device}, "
          f"threads {torch.get_num_threads()}; first-step loss ours {first[0]:.4f} vs transformers {first[1]:.4f}")
    peak = peak_flops(device)
    for label, value in tps.items():
        mfu = f"  MFU {value * flops_per_token(config, args.seq_len) / peak:.1%}" if peak else ""
        print(f"  {label:13s} {value:10,.0f} tokens/s{mfu}")
    print(f"  ratio openseason/transformers: {tps['openseason'] / tps['transformers']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["pythia-14m", "pythia-70m"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    for name in args.models:
        bench(name, args)


if __name__ == "__main__":
    main()
