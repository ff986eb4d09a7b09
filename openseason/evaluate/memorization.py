"""Pythia-style memorization (arXiv 2304.01373, 2304.11158).

For each training sequence the first `prompt_len` (32) tokens are the prompt; the model decodes
`gen_len` (32) tokens greedily, conditioned on its own outputs; the score is the fraction of the
generated positions equal to the true continuation, and a sequence is memorized iff all of them match.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from ..errors import DataError


@dataclass
class MemorizationResult:
    scores: torch.Tensor                     # [N] fraction of matching positions
    generated: torch.Tensor                  # [N, gen_len] greedy continuation
    prompt_len: int
    gen_len: int
    sources: list = field(default_factory=list)  # where each sequence came from (optional)

    @property
    def memorized(self) -> torch.Tensor:
        return (self.scores == 1.0).nonzero(as_tuple=True)[0]

    def summary(self) -> dict:
        n = int(self.scores.numel())
        return {"sequences": n, "memorized": int(self.memorized.numel()),
                "memorized_fraction": float(self.memorized.numel() / n) if n else 0.0,
                "mean_score": float(self.scores.mean()) if n else 0.0,
                "prompt_len": self.prompt_len, "gen_len": self.gen_len}


def greedy_continuations(model, prompts: torch.Tensor, gen_len: int) -> torch.Tensor:
    """Greedy decode exactly `gen_len` tokens (no stopping at EOS) for a batch of prompts [B, P]."""
    from ..generation import SamplingParams, generate_ids

    outs = generate_ids(model, prompts.tolist(), SamplingParams(max_new_tokens=gen_len, ignore_eos=True))
    return torch.tensor([o.token_ids for o in outs], dtype=torch.long, device=prompts.device)


def memorization_scores(model, sequences: torch.Tensor, *, prompt_len: int = 32, gen_len: int = 32,
                        batch_size: int = 64, progress: bool = False) -> MemorizationResult:
    """Score every row of `sequences` [N, >= prompt_len + gen_len]."""
    if sequences.dim() != 2 or sequences.size(1) < prompt_len + gen_len:
        raise DataError(f"sequences must be [N, >= {prompt_len + gen_len}] tokens, got {tuple(sequences.shape)}")
    device = next(model.parameters()).device
    model.eval()
    scores, generated = [], []
    batches = range(0, sequences.size(0), batch_size)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("memorization", total=len(batches))
    try:
        for start in batches:
            chunk = sequences[start:start + batch_size].to(device)
            gen = greedy_continuations(model, chunk[:, :prompt_len], gen_len)
            truth = chunk[:, prompt_len:prompt_len + gen_len]
            scores.append((gen == truth).float().mean(-1).cpu())
            generated.append(gen.cpu())
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    if not scores:
        raise DataError("no sequences to score")
    return MemorizationResult(torch.cat(scores), torch.cat(generated), prompt_len, gen_len)


def sequences_from_texts(texts: Iterable[str], tokenizer, length: int = 64) -> tuple[torch.Tensor, list, int]:
    """The first `length` tokens of every text long enough; returns (sequences, kept indices, skipped)."""
    rows, kept, skipped = [], [], 0
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if len(ids) < length:
            skipped += 1
            continue
        rows.append(ids[:length])
        kept.append(i)
    if not rows:
        raise DataError(f"no document has at least {length} tokens")
    return torch.tensor(rows, dtype=torch.long), kept, skipped


def plot_histogram(scores: torch.Tensor, path: str | Path, title: str = "Memorization scores") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(scores.numpy(), bins=33, range=(0, 1), color="#3b6ea5")
    ax.set_xlabel("fraction of the 32 continuation tokens reproduced")
    ax.set_ylabel("sequences")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
