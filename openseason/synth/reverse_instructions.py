"""LongForm reverse instructions (arXiv 2304.08460): for each human-written document, ask an LLM for
the instruction it answers, so the document becomes a long, human-written output.

Three styles, as in the paper: an instruction, an informal chatbot message, a search-engine query
(templates/reverse_instructions.yaml). `mode="random"` picks one style per document (the paper's
mix); `mode="all"` asks for every style. With `length_hint` (a probability), a sentence stating the
document's length ("Respond in about 120 words.") is appended to that share of the instructions.

Output rows follow LongForm's schema, {"input": instruction, "output": document, "source", "subset":
style}, plus conversation records; every call is logged and resumable (store.py).
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, DataError, where
from ..fileio import iter_jsonl
from ..generation.client import LLMClient, LLMRequest
from .calls import Ask, Variant, fit_counts, send_logged, with_prompt
from .prompting import load_yaml_template, render
from .report import run_status, write_report
from .store import OutputFiles, StageLog, stable_hash

STYLES = ("instruction", "chatbot", "query")
DEFAULT_REQUEST = LLMRequest("", max_tokens=128, temperature=0.7, top_p=0.9, stop=("\n\n",))


def load_corpus(path: str | Path, text_field: Optional[str] = None) -> list[dict]:
    """Documents from JSONL: the text in `text_field`, else "text", else "output" (LongForm's column)."""
    docs = []
    for lineno, row in iter_jsonl(path):
        loc = where(path, lineno)
        if not isinstance(row, dict):
            raise DataError("expected a JSON object per line", where=loc)
        fields = [text_field] if text_field else ["text", "output"]
        text = next((row[f] for f in fields if isinstance(row.get(f), str)), None)
        if text is None or not text.strip():
            raise DataError(f"no document text in {' or '.join(repr(f) for f in fields)}", where=loc,
                            hint="pass --text-field NAME for another column")
        docs.append({"id": str(row.get("id", f"doc-{lineno}")), "text": text.strip(),
                     "source": row.get("source", Path(path).stem)})
    return docs


def shorten(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def clean_instruction(text: str, style: str) -> str:
    """First paragraph of the answer, without a repeated label or wrapping quotes."""
    text = text.strip().split("\n\n")[0].strip()
    text = re.sub(r"^(instruction|message|query)\s*:\s*", "", text, flags=re.IGNORECASE).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def length_hint(text: str, rng: random.Random, hints: Sequence[str]) -> str:
    words = len(text.split())
    sentences = max(1, len(re.findall(r"[.!?](\s|$)", text)))
    return render(rng.choice(list(hints)), words=max(10, round(words, -1)), sentences=sentences)


def shorter_documents(text: str, max_words: int, min_words: int = 25) -> list[tuple[str, int]]:
    """(document shortened to n words, n) for n = max_words/2, /4, ... down to `min_words`."""
    words = len(text.split())
    out, n = [], min(max_words, words) // 2
    while n >= min_words:
        out.append((shorten(text, n), n))
        n //= 2
    return out


def reverse_instructions(corpus: str | Path, backend: LLMClient, out: str | Path, *, styles: Sequence[str] = STYLES,
                         mode: str = "random", length_hint_prob: float = 0.0, max_words: int = 600, seed: int = 0,
                         text_field: Optional[str] = None, template_dir=None, max_instruction_words: int = 200,
                         chunk_size: int = 64, max_tokens: Optional[int] = None) -> dict:
    """Write OUT/longform.jsonl, OUT/conversations.jsonl, OUT/rejected.jsonl and a report.

    The three JSONL files are written as the run goes (chunk by chunk), so a stopped run leaves the
    rows done so far; a rerun resumes from the log and writes the same files as an uninterrupted run.
    max_tokens: completion tokens per call (default 128). A document that does not fit the backend's
    context with its prompt is shortened further (halving its words, down to 25) and the report says
    how often (`fitted`). The report's "ok" is False when calls failed or nothing was kept."""
    bad = [s for s in styles if s not in STYLES]
    if bad or not styles:
        raise ConfigError(f"unknown style(s) {bad}", hint=f"choose from {list(STYLES)}")
    if mode not in ("random", "all"):
        raise ConfigError(f"unknown mode {mode!r}", hint="use 'random' (one style per document) or 'all'")
    if not 0.0 <= length_hint_prob <= 1.0:
        raise ConfigError(f"length hint probability must be in [0, 1], not {length_hint_prob}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, not {max_tokens}")
    request = DEFAULT_REQUEST if max_tokens is None else replace(DEFAULT_REQUEST, max_tokens=max_tokens)
    started = time.perf_counter()
    out = Path(out)
    templates = load_yaml_template("reverse_instructions.yaml", template_dir)
    docs = load_corpus(corpus, text_field)
    backend.prepare()
    log = StageLog(out / "logs" / "reverse_instructions.jsonl", "reverse-instructions",
                   {"templates": templates["styles"], "max_words": max_words, "params": request.params()})
    jobs = []
    for doc in docs:
        rng = random.Random(f"{seed}:{doc['id']}")
        chosen = [rng.choice(list(styles))] if mode == "random" else list(styles)
        for style in chosen:
            hint = length_hint(doc["text"], rng, templates["length_hints"]) if rng.random() < length_hint_prob else None
            prompt = render(templates["styles"][style], document=shorten(doc["text"], max_words)).rstrip("\n")
            jobs.append((doc, style, hint, prompt))
    counts: dict = {}
    kept = 0
    failed = 0
    results_seen = []

    def count(reason):
        counts[reason] = counts.get(reason, 0) + 1

    files = OutputFiles(out, ["longform.jsonl", "rejected.jsonl", "conversations.jsonl"])
    try:
        for lo in range(0, len(jobs), chunk_size):
            part = jobs[lo:lo + chunk_size]
            items = []
            for d, s, _, p in part:
                shorter = [Variant(render(templates["styles"][s], document=text).rstrip("\n"),
                                   f"document shortened to {n} words", {"document_words": n})
                           for text, n in shorter_documents(d["text"], max_words)]
                items.append(Ask(log.key({"prompt": p}), with_prompt(request, p), {"doc": d["id"], "style": s},
                                 shorter))
            rows, rejected = [], []
            results = send_logged(backend, log, items)
            results_seen += results
            for ask, (doc, style, hint, _), res in zip(items, part, results):
                if res is None:
                    failed += 1
                    count("failed call (retried next run)")
                    rejected.append({"id": doc["id"], "style": style, "reason": "failed call (retried next run)",
                                     "error": log.failure(ask.key)})
                    continue
                instruction = clean_instruction(res["text"], style)
                reason = ("empty instruction" if not instruction else
                          f"instruction longer than {max_instruction_words} words"
                          if len(instruction.split()) > max_instruction_words else None)
                if reason:
                    count(reason)
                    rejected.append({"id": doc["id"], "style": style, "reason": reason, "answer": res["text"]})
                    continue
                if hint:
                    instruction = f"{instruction} {hint}"
                count("kept")
                rows.append({"id": f"{doc['id']}-{style}", "input": instruction, "output": doc["text"],
                             "source": doc["source"], "subset": style, "length_hint": hint})
            kept += len(rows)
            files.add("longform.jsonl", rows)
            files.add("rejected.jsonl", rejected)
            files.add("conversations.jsonl", [
                {"id": f"longform-{stable_hash(r['id'], 12)}", "source": "reverse-instructions",
                 "messages": [{"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}],
                 "meta": {"style": r["subset"], "document": r["id"], "length_hint": r["length_hint"],
                          "generator": backend.describe()}} for r in rows])
            files.flush()
    finally:
        log.close()
        files.close()
    problems = []
    if failed:
        problems.append(f"{failed} call(s) failed; rerun to retry them (see rejected.jsonl)")
    if not kept:
        problems.append(f"nothing kept ({len(jobs)} requests; see rejected.jsonl)")
    st = backend.stats
    report = {"run": {"stage": "reverse-instructions", "corpus": str(corpus), "styles": list(styles), "mode": mode,
                      "length_hint_prob": length_hint_prob, "seed": seed, "max_tokens": request.max_tokens,
                      "backend": backend.describe()},
              **run_status(problems),
              "counts": {"documents": len(docs), "requests": len(jobs), "kept": kept, "failed_calls_pending": failed,
                         "rejected": files.counts["rejected.jsonl"]},
              "filters": {"reverse-instructions": counts},
              "fitted": {k: v for k, v in {"reverse-instructions": fit_counts(results_seen)}.items() if v},
              "cost": {"calls": st.calls, "failed_calls": st.failed, "context_exceeded": st.context_exceeded,
                       "retries": st.retries,
                       "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
                       "wall_seconds": round(time.perf_counter() - started, 3)}}
    return write_report(out, report)
