"""Token-level perplexity with a sliding window, over documents or prepared conversations.

The window follows the usual strided evaluation of fixed-length models: windows of `window` tokens
start every `stride` tokens, and each window scores only the tokens no earlier window scored, with
everything before them in the window as context. stride == window gives disjoint chunks (fast,
less context); a smaller stride gives each token more context. For conversations only assistant
tokens are scored (the tokens the model would be trained to produce), with the rest as context.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import DataError, OpenseasonError
from ..fileio import FIX_LINE_HINT, iter_jsonl
from .scoring import pad_right, score_targets


@dataclass
class ScoringItem:
    """One sequence to score: token ids and which of them are targets."""
    ids: list[int]
    targets: list[bool]


def sliding_windows(item: ScoringItem, window: int, stride: int) -> list[ScoringItem]:
    """Cut one long item into windows; every target token is scored exactly once."""
    n = len(item.ids)
    if stride <= 0 or stride > window:
        raise OpenseasonError(f"stride must be in 1..window ({window}), got {stride}")
    pieces, prev_end = [], 0
    for begin in range(0, max(n, 1), stride):
        end = min(begin + window, n)
        new = end - max(prev_end, begin)
        targets = [False] * (end - begin)
        for t in range(end - new, end):
            # A window's first token has no context inside it. With stride < window the previous
            # window already scored it; with disjoint windows (stride == window) it goes unscored,
            # exactly as in the usual strided evaluation with transformers.
            if t > begin:
                targets[t - begin] = item.targets[t]
        pieces.append(ScoringItem(item.ids[begin:end], targets))
        prev_end = end
        if end == n:
            break
    return pieces


@torch.inference_mode()
def score_items(model, items: Iterable[ScoringItem], *, window: int, stride: Optional[int] = None,
                batch_size: int = 8, pad_id: int = 0, progress: bool = False) -> dict:
    """Sum of negative log-likelihood and target count over all items (sliding windows inside each)."""
    stride = stride or window
    windows = [w for item in items for w in sliding_windows(item, window, stride) if any(w.targets)]
    windows.sort(key=lambda w: len(w.ids), reverse=True)  # similar lengths share a batch: less padding
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        ids = pad_right([w.ids for w in batch], pad_id).to(device)
        mask = pad_right([[int(t) for t in w.targets] for w in batch], 0).bool().to(device)
        scored = score_targets(model, ids, mask)
        nll -= float(scored.logprobs.sum())
        count += int(scored.logprobs.numel())
    return {"nll": nll, "tokens": count, "windows": len(windows)}


def document_items(texts: Iterable[str], tokenizer) -> list[ScoringItem]:
    items = []
    for text in texts:
        ids = tokenizer.encode(text)
        items.append(ScoringItem(ids, [True] * len(ids)))
    return items


def conversation_items(conversations: Iterable[list[dict]], tokenizer, style, max_length: int = 10**9
                       ) -> list[ScoringItem]:
    """Assistant tokens are the targets, rendered with the same tokenization training uses."""
    from ..data.sft import tokenize_conversation

    items = []
    for messages in conversations:
        enc = tokenize_conversation(messages, tokenizer, style, max_length, train_on="assistant")
        items.append(ScoringItem(list(enc["input_ids"]), [label != -100 for label in enc["labels"]]))
    return items


def read_eval_data(path: str | Path) -> tuple[str, list]:
    """Read documents or conversations from a file or prepared directory.

    Accepts a prepared directory (conversations.jsonl or documents.jsonl), a .jsonl file whose rows
    have "messages" (conversations) or "text" (documents), or a plain text file (one document).
    Returns ("documents", [text, ...]) or ("conversations", [messages, ...]).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("conversations.jsonl", "documents.jsonl"):
            if (path / name).exists():
                return read_eval_data(path / name)
        raise DataError("no conversations.jsonl or documents.jsonl in directory", where=str(path))
    if not path.exists():
        raise DataError("file not found", where=str(path))
    if path.suffix not in (".jsonl", ".gz"):
        return "documents", [path.read_text(encoding="utf-8")]
    docs, convs = [], []
    for lineno, row in iter_jsonl(path, fail_hint=FIX_LINE_HINT):
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            convs.append(row["messages"])
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            docs.append(row["text"])
        else:
            raise DataError('row has neither "messages" (a list) nor "text" (a string)', where=f"{path}:{lineno}")
    if docs and convs:
        raise DataError("file mixes documents and conversations; score them separately", where=str(path))
    return ("conversations", convs) if convs else ("documents", docs)


def perplexity(llm, data: str | Path, *, window: Optional[int] = None, stride: Optional[int] = None,
               batch_size: int = 8, style: Optional[str] = None) -> dict:
    """Perplexity of a loaded model (openseason.LLM) on a file or prepared directory.

    Returns {"perplexity", "tokens", "nll", "mean_nll", "kind", "window", "stride", "items", "windows"}.
    """
    kind, rows = read_eval_data(data)
    if not rows:
        raise DataError("no documents or conversations to score", where=str(data))
    window = window or llm.config.block_size
    if window > llm.config.block_size:
        raise OpenseasonError(f"window {window} is longer than the context window ({llm.config.block_size})")
    stride = stride or window
    if kind == "documents":
        items = document_items(rows, llm.tokenizer)
    else:
        from ..prompts import as_chat_format

        # --style, else the prepared data's style, else the checkpoint's chat format (the one rule:
        # run_card style > chat template > "plain"; a template cannot mark assistant tokens: error)
        fmt = as_chat_format(style or _stored_style(data) or llm.chat_format)
        items = conversation_items(rows, llm.tokenizer, fmt)
    pad = llm.tokenizer.pad_id if llm.tokenizer.pad_id is not None else 0
    totals = score_items(llm.model, items, window=window, stride=stride, batch_size=batch_size, pad_id=pad)
    if totals["tokens"] == 0:
        raise DataError("nothing to score: no target tokens", where=str(data))
    mean = totals["nll"] / totals["tokens"]
    return {"perplexity": math.exp(mean), "tokens": totals["tokens"], "nll": totals["nll"], "mean_nll": mean,
            "kind": kind, "window": window, "stride": stride, "items": len(items), "windows": totals["windows"]}


def _stored_style(data: str | Path) -> Optional[str]:
    """The prompt style a prepared directory recorded, if any."""
    directory = Path(data) if Path(data).is_dir() else Path(data).parent
    try:
        from ..data.sft import prepared_style

        return prepared_style(directory)
    except (ImportError, OpenseasonError, FileNotFoundError, json.JSONDecodeError):
        return None
