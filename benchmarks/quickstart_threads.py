"""Training steps of the quickstart's tiny model on 1 vs N intra-op threads, with and without a busy peer.

The quickstart model (888K parameters, micro-batch 32 x 64 tokens) does many small matmuls. With
more threads than idle cores, torch's worker threads spin waiting for a peer the scheduler took
away, and a step can take 10x longer. This script times full training steps (forward, backward,
AdamW) of that model in a subprocess per setting, once on an idle-ish machine and once while a
`python -c 'while True: pass'` process keeps one core busy, and prints the ratio.

    .venv/bin/python benchmarks/quickstart_threads.py [--steps 60] [--threads 2]

The machine is whatever runs it: report its core count and load average next to the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP_SCRIPT = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from openseason.config import Config
from openseason.model import GPT
from openseason.train.quickstart import QUICKSTART_MODEL
from openseason.train.objectives.sft import token_loss_sum
config = Config(**QUICKSTART_MODEL, vocab_size=257, padded_vocab_size=264, eos_token_id=256)
torch.manual_seed(0)
model = GPT(config)
model.init_weights()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 257, (32, 64))
batch = {"input_ids": ids, "labels": ids.clone()}
times = []
for i in range(int(sys.argv[2]) + 5):
    t = time.perf_counter()
    loss, n = token_loss_sum(model, batch)
    (loss / n).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
times = sorted(times[5:])
print(json.dumps({"median_ms": 1000 * times[len(times) // 2], "mean_ms": 1000 * sum(times) / len(times)}))
"""


def run(threads: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    rows = []
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(0.5 if busy else 0)
            load = os.getloadavg()[0]
            one = run(1, args.steps)
            many = run(args.threads, args.steps)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        rows.append((busy, load, one, many))
    print(f"{os.cpu_count()} cores; {args.steps} timed steps each (median / mean ms per step)")
    print("| peer | load avg (1 min) | 1 thread | %d threads | %d threads / 1 thread |" % (args.threads, args.threads))
    print("|---|---|---|---|---|")
    for busy, load, one, many in rows:
        print(f"| {'one busy core' if busy else 'none'} | {load:.2f} | {one['median_ms']:.1f} / {one['mean_ms']:.1f} "
              f"| {many['median_ms']:.1f} / {many['mean_ms']:.1f} | {many['mean_ms'] / one['mean_ms']:.2f}x |")


if __name__ == "__main__":
    main()
