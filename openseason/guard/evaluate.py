"""Intent accuracy of a rails config on a labelled set of messages ("intent | message" lines)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import DataError, where


def load_paraphrases(path: str | Path) -> list[tuple[str, str]]:
    """Rows of (intent, message) from a text file of `intent | message` lines (# comments allowed)."""
    rows = []
    if not Path(path).is_file():
        raise DataError("paraphrase file not found" if not Path(path).exists() else "is a directory, not a file",
                        where=str(path))
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


def calibrate(rails, rows: list[tuple[str, str]], thresholds=None) -> dict:
    """Intent accuracy of the embeddings path at each similarity threshold (below it: the fallback
    intent), from one nearest-neighbour search per message; suggests the most accurate threshold
    (ties: the one nearest the configured threshold)."""
    if not rows:
        raise DataError("no labelled messages to calibrate on", hint="write `intent | message` lines")
    if thresholds is None:
        thresholds = [round(0.05 * i, 2) for i in range(4, 20)]
    fallback = rails.config.fallback_intent
    nearest = []
    for label, text in rows:
        best = rails.index.best(text)
        nearest.append((label, best.intent if best else None, best.score if best else -1.0))
    table = []
    for t in thresholds:
        correct = sum((intent if score >= t else fallback) == label for label, intent, score in nearest)
        claimed = [(label, intent) for label, intent, score in nearest if score >= t]
        table.append({"threshold": t, "accuracy": correct / len(rows),
                      "coverage": len(claimed) / len(rows),
                      "precision": (sum(l == i for l, i in claimed) / len(claimed)) if claimed else 0.0})
    current = rails.config.threshold
    best = max(table, key=lambda r: (round(r["accuracy"], 9), -abs(r["threshold"] - current)))
    return {"table": table, "suggested_threshold": best["threshold"], "suggested_accuracy": best["accuracy"],
            "current_threshold": current,
            "current_accuracy": sum((i if s >= current else fallback) == l for l, i, s in nearest) / len(rows),
            "total": len(rows)}
