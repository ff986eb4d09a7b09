"""Self-improvement (arXiv 2304.01228): a finetuned model rewrites its own training set.

For each training example the model runs beam search over the prompt (K beams, our own decoder with
a KV cache: the prompt is encoded once, then the cache rows are reordered as beams are re-ranked);
the beam most similar to the reference output (sentence BLEU or ROUGE-L) is added to the training
set as an extra example. Beams identical to the reference are not added (they carry nothing new).
Resumable: each example's beams are logged (store.py) as soon as they are computed.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, DataError, where
from ..fileio import read_json_rows, write_json_atomic
from .report import run_status, write_report
from .rouge import rouge_l
from .store import OutputFiles, StageLog, stable_hash

__all__ = ["beam_search", "sentence_bleu", "self_improve"]


@torch.no_grad()
def beam_search(model, prompt_ids: Sequence[int], *, num_beams: int = 4, max_new_tokens: int = 64,
                eos_id: Optional[int] = None, vocab_size: Optional[int] = None, length_penalty: float = 1.0
                ) -> list[tuple[list[int], float]]:
    """Up to `num_beams` continuations of `prompt_ids` as (token ids, sum of log-probs), best first by
    score / length**length_penalty. A beam ends at `eos_id` (not included in its ids) or after
    `max_new_tokens`. Like Hugging Face's early_stopping=True, search stops once `num_beams` beams
    have finished."""
    if num_beams < 1:
        raise ValueError("num_beams must be >= 1")
    device = model.embed.weight.device
    vocab = vocab_size or model.config.padded_vocab_size
    cache = model.new_kv_cache(1, len(prompt_ids) + max_new_tokens)
    logits = model(torch.tensor([list(prompt_ids)], device=device), kv_cache=cache, last_only=True)[:, -1]
    logp = torch.log_softmax(logits[:, :vocab].float(), dim=-1)          # [1, V]
    scores = torch.zeros(1, device=device)
    seqs: list[list[int]] = [[]]
    finished: list[tuple[list[int], float]] = []

    def norm(seq_len: int, score: float) -> float:
        return score / (max(seq_len, 1) ** length_penalty)

    for step in range(max_new_tokens):
        cand = (scores[:, None] + logp).view(-1)
        top_scores, top_idx = cand.topk(min(2 * num_beams, cand.numel()))
        next_rows, next_tokens, next_scores, next_seqs = [], [], [], []
        for rank, (s, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            row, token = divmod(idx, vocab)
            if eos_id is not None and token == eos_id:
                if rank < num_beams:  # an EOS outside the top K would not have survived as a beam
                    finished.append((seqs[row], s))
                continue
            next_rows.append(row)
            next_tokens.append(token)
            next_scores.append(s)
            next_seqs.append(seqs[row] + [token])
            if len(next_rows) == num_beams:
                break
        if len(finished) >= num_beams or not next_rows or step == max_new_tokens - 1:
            if step == max_new_tokens - 1:
                finished += list(zip(next_seqs, next_scores))
            break
        cache.select(torch.tensor(next_rows, device=device))
        scores = torch.tensor(next_scores, device=device)
        seqs = next_seqs
        logits = model(torch.tensor(next_tokens, device=device)[:, None], kv_cache=cache, last_only=True)[:, -1]
        logp = torch.log_softmax(logits[:, :vocab].float(), dim=-1)
    finished.sort(key=lambda item: norm(len(item[0]), item[1]), reverse=True)
    return finished[:num_beams]


_TOKEN = re.compile(r"\w+|[^\w\s]")


def sentence_bleu(hypothesis: str, reference: str, max_order: int = 4) -> float:
    """Smoothed sentence BLEU (Lin & Och 2004: add one to the n-gram counts for n > 1), on word and
    punctuation tokens, as code-generation papers score single samples."""
    hyp, ref = _TOKEN.findall(hypothesis), _TOKEN.findall(reference)
    if not hyp or not ref:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_order + 1):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        match = sum(min(c, r[g]) for g, c in h.items())
        total = max(len(hyp) - n + 1, 0)
        if n == 1:
            if match == 0:
                return 0.0
            p = match / total
        else:
            p = (match + 1) / (total + 1)
        log_precision += math.log(p) / max_order
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(log_precision)


METRICS = {"bleu": sentence_bleu, "rouge-l": lambda h, r: rouge_l(h, r)}


def load_training_set(path: str | Path) -> list[dict]:
    """Alpaca JSON/JSONL rows {"instruction", "input"?, "output"}."""
    path = Path(path)
    rows = read_json_rows(path)
    out = []
    for lineno, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise DataError('expected {"instruction", "input", "output"} strings', where=where(path, lineno))
        out.append({"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]})
    return out


def self_improve(data: str | Path, checkpoint: str | Path, out: str | Path, *, num_beams: int = 4,
                 max_new_tokens: int = 128, metric: str = "bleu", prompt_style: Optional[str] = None,
                 length_penalty: float = 1.0, device: str = "cpu", limit: Optional[int] = None) -> dict:
    """Write OUT/augmented.json (the training set plus the best beam per example), OUT/added.jsonl,
    OUT/rejected.jsonl (every example not added, with its reason; both JSONL files written as the
    run goes) and a report.

    prompt_style: the chat format the prompts are built in; default the checkpoint's own
    (prompts.resolve_chat_format: run_card.json's style, else its chat template, else "plain"),
    i.e. what the model was finetuned with. The report's "ok" is False when every example was
    skipped (e.g. none fits the context window)."""
    from ..checkpoint import load_config, load_model
    from ..chat_template import ChatTemplate
    from ..prompts import encode_chat, resolve_chat_format
    from ..tokenizer import Tokenizer

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}", hint=f"choose one of {sorted(METRICS)}")
    if max_new_tokens < 1 or num_beams < 1:
        raise ConfigError(f"--max-tokens and --num-beams must be at least 1 (got {max_new_tokens}, {num_beams})")
    started = time.perf_counter()
    out = Path(out)
    rows = load_training_set(data)[:limit]
    style, style_reason = resolve_chat_format(checkpoint, prompt_style)
    config = load_config(checkpoint)
    model = load_model(checkpoint, device=device)
    tokenizer = Tokenizer.from_dir(checkpoint, config)
    ckpt_id = stable_hash({"path": str(Path(checkpoint).resolve()),
                           "mtime": [p.stat().st_mtime_ns for p in sorted(Path(checkpoint).glob("*.safetensors"))]})
    log = StageLog(out / "logs" / "beams.jsonl", "self-improve",
                   {"checkpoint": ckpt_id, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
                    "style": style.name, "length_penalty": length_penalty})
    score_fn = METRICS[metric]
    added, counts = [], {}
    skipped = 0
    files = OutputFiles(out, ["added.jsonl", "rejected.jsonl"])

    def reject(row: dict, reason: str, detail: Optional[str] = None) -> None:
        count(reason)
        files.add("rejected.jsonl", [{**row, "reason": reason, **({"detail": detail} if detail else {})}])

    def count(reason):
        counts[reason] = counts.get(reason, 0) + 1

    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("self-improve: beam search", total=len(rows))
        for i, row in enumerate(rows):
            if isinstance(style, ChatTemplate):  # a Jinja template knows no "input" field
                content = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
                messages = [{"role": "user", "content": content}]
            else:
                messages = [{"role": "user", "content": row["instruction"], "input": row["input"]}]
            prompt = style.render(messages)
            key = log.key({"prompt": prompt})
            if not log.done(key):
                ids = encode_chat(messages, tokenizer, style)
                if len(ids) + max_new_tokens > config.block_size:
                    log.record_failure(key, f"prompt of {len(ids)} tokens + {max_new_tokens} new exceeds the "
                                            f"context window ({config.block_size})", input={"row": i})
                else:
                    beams = beam_search(model, ids, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                        eos_id=tokenizer.eos_id, vocab_size=config.vocab_size,
                                        length_penalty=length_penalty)
                    texts = []
                    for seq, logprob in beams:
                        text = tokenizer.decode(seq)
                        for stop in style.stop_strings:
                            text = text.split(stop)[0]
                        texts.append({"text": text.strip(), "logprob": logprob})
                    log.record(key, texts, input={"row": i})
            progress.update(task, advance=1)
            beams = log.get(key)
            if beams is None:
                skipped += 1
                reject(row, "skipped: prompt + max_tokens exceed the context window", log.failure(key))
                continue
            scored = sorted(((score_fn(b["text"], row["output"]), -r, b) for r, b in enumerate(beams) if b["text"]),
                            key=lambda t: (t[0], t[1]), reverse=True)
            if not scored:
                reject(row, "all beams empty")
                continue
            best, neg_rank, beam = scored[0]
            if beam["text"] == row["output"].strip():
                reject(row, "best beam identical to the reference")
                continue
            count("added")
            added.append({"instruction": row["instruction"], "input": row["input"], "output": beam["text"],
                          "meta": {"source": "self-improve", "metric": metric, "score": best, "beam_rank": -neg_rank,
                                   "logprob": beam["logprob"], "reference": row["output"]}})
            files.add("added.jsonl", added[-1:])
            if i % 16 == 15:
                files.flush()
    log.close()
    files.close()
    augmented = rows + [{k: a[k] for k in ("instruction", "input", "output")} for a in added]
    write_json_atomic(out / "augmented.json", augmented)
    scores = [a["meta"]["score"] for a in added]
    problems = []
    if rows and skipped == len(rows):
        problems.append(f"all {len(rows)} examples skipped: their prompt + {max_new_tokens} new tokens exceed the "
                        f"context window ({config.block_size}); lower --max-tokens or use shorter inputs")
    if not rows:
        problems.append("no examples")
    report = {"run": {"stage": "self-improve", "data": str(data), "checkpoint": str(checkpoint), "num_beams": num_beams,
                      "metric": metric, "prompt_style": style.name, "prompt_style_reason": style_reason,
                      "max_new_tokens": max_new_tokens},
              **run_status(problems),
              "counts": {"examples": len(rows), "added": len(added), "skipped": skipped,
                         "rejected": files.counts["rejected.jsonl"], "augmented_total": len(augmented),
                         f"mean_{metric}_of_added": (sum(scores) / len(scores)) if scores else None},
              "filters": {"self-improve": counts},
              "cost": {"model_forward_calls": "in process", "wall_seconds": round(time.perf_counter() - started, 3)}}
    return write_report(out, report)
