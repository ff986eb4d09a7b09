"""Pythia-style memorization (arXiv 2304.01373, 2304.11158).

For each training sequence the first `prompt_len` (32) tokens are the prompt; the model decodes
`gen_len` (32) tokens greedily, conditioned on its own outputs; the score is the fraction of the
generated positions equal to the true continuation, and a sequence is memorized iff all of them match.

The sequences come from either
- a token directory (`data tokenize`), read exactly as pretraining cut it: training sequence j is
  tokens [j * seq_len, j * seq_len + seq_len + 1) of the stream (data/shards.py), so the prompt is
  its first 32 tokens and the continuation the next 32, as Pythia scored its own training data; or
- documents (texts): the first prompt_len + gen_len tokens of every document long enough.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
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


def is_token_dir(path: str | Path) -> bool:
    from ..data.tokenize import MANIFEST

    return Path(path).is_dir() and (Path(path) / MANIFEST).exists()


def sequences_from_tokens(directory: str | Path, seq_len: int, length: int = 64, limit: Optional[int] = None
                          ) -> tuple[torch.Tensor, list[int]]:
    """The first `length` tokens of training sequences 0, 1, ... (at most `limit`) of a token directory
    cut into sequences of seq_len + 1 tokens as pretraining cuts it; returns (sequences, their indices)."""
    from ..data.shards import TokenStream

    if seq_len < 1:
        raise DataError(f"--seq-len must be >= 1, not {seq_len}")
    if length > seq_len + 1:
        raise DataError(f"prompt + continuation ({length} tokens) is longer than a training sequence "
                        f"({seq_len} + 1 tokens)", hint="pass a smaller --prompt-len / --gen-len or a larger --seq-len")
    stream = TokenStream(directory)
    count = (len(stream) - 1) // seq_len  # whole training sequences, as PretrainLoader counts them
    if count < 1:
        raise DataError(f"the token stream ({len(stream)} tokens) is shorter than one training sequence of "
                        f"{seq_len} + 1 tokens", where=str(directory), hint="pass a smaller --seq-len")
    if limit is not None:
        count = min(count, limit)
    rows = np.stack([stream.read(j * seq_len, length) for j in range(count)])
    return torch.from_numpy(rows), list(range(count))


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


def _default_seq_len(llm) -> tuple[int, str]:
    """The training sequence length a pretraining run recorded in its run card, else the context window."""
    from ..checkpoint import read_run_card

    recipe = read_run_card(llm.path).get("recipe") if llm.path is not None else None
    if isinstance(recipe, dict) and isinstance(recipe.get("seq_len"), int):
        return recipe["seq_len"], "the run card's recipe.seq_len"
    return llm.config.block_size, "the context window (block_size)"


def memorization(llm, data: str | Path, *, prompt_len: int = 32, gen_len: int = 32, batch_size: int = 64,
                 seq_len: Optional[int] = None, limit: Optional[int] = None, progress: bool = False) -> dict:
    """Memorization of a loaded model (openseason.LLM) on a token directory or documents.

    Returns {"result": MemorizationResult, "origins": [where each sequence came from: {"sequence",
    "offset"} for tokens, {"document"} for documents], "summary": result.summary() plus the source}."""
    if prompt_len < 1 or gen_len < 1:
        raise DataError(f"--prompt-len and --gen-len must be >= 1 (got {prompt_len}, {gen_len})")
    length = prompt_len + gen_len
    if is_token_dir(data):
        source = "tokens"
        seq_len, seq_len_from = (seq_len, "--seq-len") if seq_len is not None else _default_seq_len(llm)
        sequences, indices = sequences_from_tokens(data, seq_len, length, limit)
        origins = [{"sequence": j, "offset": j * seq_len} for j in indices]
        extra = {"source": source, "seq_len": seq_len, "seq_len_from": seq_len_from,
                 "tokenizer_matches": _same_tokenizer(llm, data)}
        vocab = llm.model.config.padded_vocab_size
        if int(sequences.max()) >= vocab:
            raise DataError(f"token id {int(sequences.max())} is outside the model's vocabulary ({vocab})",
                            where=str(data), hint="tokenize the data with this checkpoint's tokenizer")
    else:
        if seq_len is not None:
            raise DataError("--seq-len applies to a token directory (`data tokenize` output), not to documents",
                            where=str(data))
        from .perplexity import read_eval_data

        kind, rows = read_eval_data(data)
        if kind != "documents":
            raise DataError('memorization reads documents (rows with "text") or a token directory', where=str(data))
        rows = rows[:limit] if limit is not None else rows
        sequences, kept, skipped = sequences_from_texts(rows, llm.tokenizer, length)
        origins = [{"document": i} for i in kept]
        extra = {"source": "documents", "skipped_short_documents": skipped}
    result = memorization_scores(llm.model, sequences, prompt_len=prompt_len, gen_len=gen_len,
                                 batch_size=batch_size, progress=progress)
    result.sources = origins
    return {"result": result, "sequences": sequences, "origins": origins, "summary": {**result.summary(), **extra}}


def _same_tokenizer(llm, directory) -> Optional[bool]:
    """Whether the token directory was made with the checkpoint's tokenizer file (None: cannot tell)."""
    from ..data.tokenize import read_manifest, sha256_file

    wanted = (read_manifest(directory).get("tokenizer") or {}).get("sha256")
    own = Path(llm.path) / "tokenizer.json" if llm.path is not None else None
    if not wanted or own is None or not own.exists():
        return None
    return sha256_file(own) == wanted
