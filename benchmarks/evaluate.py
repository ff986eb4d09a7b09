"""Loglikelihood throughput: openseason's harness adapter vs lm-eval's own HFLM, same model, same requests.

    python benchmarks/evaluate.py                       # random-weight pythia-70m on CPU, 128 requests
    python benchmarks/evaluate.py --model pythia-160m --requests 256 --batch-size 16

Both sides score the same (context, continuation) requests through the harness's `loglikelihood`
API in one process: ours through OpenseasonLM (our forward pass, log-softmax only at continuation
positions), the peer through lm_eval.models.huggingface.HFLM on the same weights saved with
`convert_to_hf`. One warm-up pass each, then alternating timed passes; the median is reported with
the largest difference between the two sides' log-likelihoods.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseason import LLM  # noqa: E402
from openseason.checkpoint import save_checkpoint  # noqa: E402
from openseason.config import Config  # noqa: E402
from openseason.convert import convert_to_hf  # noqa: E402
from openseason.evaluate.harness import OpenseasonLM  # noqa: E402
from openseason.model import GPT  # noqa: E402
from openseason.tokenizer import train_bpe  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an had they you were their one all we can her has there been if more when will would who so no "
         "model data train open license answer question number reverse sort count convert").split()


def make_requests(n: int, seed: int = 0):
    from lm_eval.api.instance import Instance

    rng = random.Random(seed)
    requests = []
    for i in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 240)))
        continuation = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        requests.append(Instance("loglikelihood", {}, (context, continuation), i))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pythia-70m")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    tokenizer = train_bpe([" ".join(WORDS)] * 50, vocab_size=400)
    model = GPT(Config.from_name(args.model))
    model.init_weights()
    ckpt = save_checkpoint(work / "ckpt", model, tokenizer=tokenizer)
    convert_to_hf(ckpt, work / "hf")
    ours = OpenseasonLM(llm=LLM.load(ckpt, device="cpu"), batch_size=args.batch_size)
    peer = HFLM(pretrained=str(work / "hf"), device="cpu", batch_size=args.batch_size)
    requests = make_requests(args.requests)
    n_tokens = sum(len(ours.tok_encode(r.args[0] + r.args[1])) for r in requests)

    ours.loglikelihood(requests[: args.batch_size])  # warm-up
    peer.loglikelihood(requests[: args.batch_size], disable_tqdm=True)
    times = {"openseason": [], "lm-eval HFLM": []}
    results = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        results["openseason"] = ours.loglikelihood(requests)
        times["openseason"].append(time.perf_counter() - t)
        t = time.perf_counter()
        results["lm-eval HFLM"] = peer.loglikelihood(requests, disable_tqdm=True)
        times["lm-eval HFLM"].append(time.perf_counter() - t)
    diff = max(abs(a[0] - b[0]) for a, b in zip(results["openseason"], results["lm-eval HFLM"]))
    same_greedy = sum(a[1] == b[1] for a, b in zip(results["openseason"], results["lm-eval HFLM"]))
    print(f"{args.model}, {args.requests} loglikelihood requests ({n_tokens} tokens), batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:14s} {med:7.2f} s  {args.requests / med:8.1f} requests/s  {n_tokens / med:9.0f} tokens/s")
    ratio = statistics.median(times["lm-eval HFLM"]) / statistics.median(times["openseason"])
    print(f"  speed-up: {ratio:.2f}x   max |logprob difference|: {diff:.2e}   "
          f"is_greedy agreement: {same_greedy}/{len(requests)}")


if __name__ == "__main__":
    main()
