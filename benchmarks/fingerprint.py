"""PEFT base fingerprint (openseason.checkpoint.weights_fingerprint) vs a full sha256 of the same weights.

Loading a PEFT checkpoint now fingerprints its base; this measures what that adds. The peer is
hashlib.sha256 over every byte of the weight files (what `sha256sum` or an exact fingerprint would
cost). Both run on the same files in one process, page cache warm (one untimed pass first), best of 3.

    python benchmarks/fingerprint.py --config pythia-160m
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from openseason.checkpoint import save_checkpoint, weight_files, weights_fingerprint
from openseason.config import Config
from openseason.model import GPT


from timing import best_time  # noqa: E402

def full_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for file in weight_files(directory):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pythia-160m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT(Config.from_name(args.config))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "base", model)
        size = sum(f.stat().st_size for f in weight_files(ckpt))
        tensors = len(model.state_dict())
        del model
        ours = best_time(lambda: weights_fingerprint(ckpt), args.repeats, warmup=True)
        peer = best_time(lambda: full_sha256(ckpt), args.repeats, warmup=True)
    print(f"{args.config}: {size / 2**20:.0f} MiB in {tensors} tensors; load average {os.getloadavg()[0]:.1f}")
    print(f"full sha256 {peer * 1000:.1f} ms | weights_fingerprint {ours * 1000:.2f} ms | "
          f"{peer / ours:.0f}x less time")


if __name__ == "__main__":
    main()
