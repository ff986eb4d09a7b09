"""Intent accuracy of a rails config on a labelled set of messages ("intent | message" lines)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import DataError, where


def load_paraphrases(path: str | Path) -> list[tuple[str, str]]:
    """Rows of (intent, message) from a text file of `intent | message` lines (# comments allowed)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if " | " not in line:
            raise DataError("expected `intent | message`", where=where(path, lineno))
        label, text = line.split(" | ", 1)
        rows.append((label.strip(), text.strip()))
    return rows


def accuracy(rails, rows: list[tuple[str, str]]) -> dict:
    """Top-1 intent accuracy (the fallback intent counts as a label) with per-intent accuracy and errors."""
    hits, per = 0, defaultdict(lambda: [0, 0])
    errors, llm_calls = [], 0
    for label, text in rows:
        decision = rails.check(text)
        llm_calls += decision.llm_calls
        ok = decision.intent == label
        hits += ok
        per[label][0] += ok
        per[label][1] += 1
        if not ok:
            errors.append({"label": label, "text": text, "got": decision.intent, "score": decision.score})
    return {"accuracy": hits / len(rows) if rows else 0.0, "total": len(rows), "correct": hits,
            "per_intent": {k: c / n for k, (c, n) in per.items()}, "errors": errors, "llm_calls": llm_calls}
