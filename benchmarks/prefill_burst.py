"""Prefill of prompts that arrive together: each alone (the engine's default) vs one left-padded pass
(`serve --prefill-together`), timed in turn on the same model, and whether each way leaves a prompt's
cache rows with the bits it gets alone.

    .venv/bin/python benchmarks/prefill_burst.py                      # llama-6x512, fp32 / bf16 / int8-dynamic
    .venv/bin/python benchmarks/prefill_burst.py --model pythia-70m --threads 1

Random weights (benchmarks/decode.py's configs), our CPU kernels as `prepare_for_decoding` routes them.
Prints the median milliseconds of `RunningBatch.prefill` per burst and the together/alone ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decode import bench_config  # noqa: E402
from openseason.generation import SamplingParams, prepare_for_decoding  # noqa: E402
from openseason.generation.engine import RunningBatch, Sequence  # noqa: E402
from openseason.generation.quantize import quantize  # noqa: E402
from openseason.model import GPT  # noqa: E402

BURSTS = {"8 prompts x 20": [20] * 8, "4 copies x 53": [53] * 4, "4 mixed 10-53": [10, 25, 40, 53],
          "2 long 180/200": [200, 180]}


def prefill(model, prompts, together: bool) -> tuple[float, RunningBatch]:
    batch = RunningBatch(model, prefill_together=together)
    params = SamplingParams(max_new_tokens=4)
    start = time.perf_counter()
    batch.prefill([[Sequence(p, params)] for p in prompts])
    return time.perf_counter() - start, batch


def same_rows_as_alone(model, prompts, batch: RunningBatch) -> bool:
    """Every prompt's keys and values in `batch` equal, bit for bit, those it leaves when prefilled alone."""
    end = batch.cache.length
    for row, p in enumerate(prompts):
        _, alone = prefill(model, [p], together=False)
        for got, want in zip(batch.cache.k + batch.cache.v, alone.cache.k + alone.cache.v):
            if not torch.equal(got[row, :, end - len(p):end], want[0, :, :len(p)]):
                return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-6x512")
    ap.add_argument("--precisions", default="fp32,bf16,int8-dynamic")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.model}, {args.threads} threads, median of {args.repeats - 2} bursts after 2 warm-up, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'precision':<13}{'burst':<17}{'alone ms':>9}{'together ms':>12}{'together/alone':>15}"
          f"{'  same bits as alone (alone / together)'}")
    for precision in args.precisions.split(","):
        torch.manual_seed(0)
        model = GPT(bench_config(args.model)).eval()
        model.init_weights()
        if precision != "fp32":
            quantize(model, precision)
        prepare_for_decoding(model)
        vocab = model.config.vocab_size
        for name, lengths in BURSTS.items():
            prompts = [[(7 * i + 13 * j) % (vocab - 5) + 5 for j in range(n)] for i, n in enumerate(lengths)]
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for together in (False, True):
                    times[together].append(prefill(model, prompts, together)[0])
            alone_ms, together_ms = (statistics.median(times[t][2:]) * 1e3 for t in (False, True))
            same = [same_rows_as_alone(model, prompts, prefill(model, prompts, t)[1]) for t in (False, True)]
            print(f"{precision:<13}{name:<17}{alone_ms:>9.1f}{together_ms:>12.1f}{together_ms / alone_ms:>14.2f}x"
                  f"  {same[0]} / {same[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
