"""Instruction sets with references: ask a checkpoint each item, score each answer, keep them all.

The items come from a .jsonl file of instruction/input/output rows (Alpaca, Dolly), prompt/reference
rows, Self-Instruct's user-oriented format (instances[0]), or conversations ({"messages"}: the last
assistant turn is the reference, the turns before it are the prompt), or from a prepared directory
(its conversations.jsonl). Every item keeps its id, prompt, reference, the model's output and its own
scores, so a report can be checked answer by answer (`predictions.jsonl` next to `report.json`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError, where
from ..fileio import FIX_LINE_HINT, iter_jsonl


def _text(value) -> Optional[str]:
    return value if isinstance(value, str) else None


def _item_from_messages(messages, item_id: str, loc: str) -> dict:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise DataError('"messages" must be a non-empty list of {"role", "content"} objects', where=loc)
    if messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
        raise DataError("the last message must be the assistant's reply (the reference)", where=loc)
    context = messages[:-1]
    users = [m.get("content") for m in context if m.get("role") == "user"]
    if not users:
        raise DataError("no user message before the reference reply", where=loc)
    return {"id": item_id, "messages": context, "prompt": users[-1], "reference": messages[-1]["content"]}


def _item_from_row(row: dict, item_id: str, loc: str) -> dict:
    if "messages" in row:
        return _item_from_messages(row["messages"], item_id, loc)
    instances = row.get("instances") if isinstance(row.get("instances"), list) else []
    first = instances[0] if instances and isinstance(instances[0], dict) else {}
    if _text(row.get("prompt")) is not None:
        prompt = row["prompt"]
    elif _text(row.get("instruction")) is not None:
        extra = _text(row.get("input")) or _text(first.get("input")) or ""
        prompt = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    else:
        raise DataError('row has no "instruction", "prompt" or "messages"', where=loc)
    reference = next((_text(row.get(k)) for k in ("output", "reference", "response")
                      if _text(row.get(k)) is not None), _text(first.get("output")))
    if reference is None:
        raise DataError('row has no reference ("output", "reference", "response" or instances[0].output)',
                        where=loc)
    return {"id": item_id, "messages": [{"role": "user", "content": prompt}], "prompt": prompt,
            "reference": reference}


def load_task_items(path: str | Path) -> list[dict]:
    """[{"id", "messages", "prompt", "reference"}] from a task .jsonl file or a prepared directory."""
    path = Path(path)
    if path.is_dir():
        file = path / "conversations.jsonl"
        if not file.exists():
            raise DataError("a prepared directory for `evaluate tasks` needs conversations.jsonl", where=str(path),
                            hint="prepare instruction data (`openseason data prepare dolly ...`) or pass a .jsonl "
                                 "of instruction/output rows")
        path = file
    items, seen = [], set()
    for lineno, row in iter_jsonl(path, fail_hint=FIX_LINE_HINT):
        loc = where(path, lineno)
        if not isinstance(row, dict):
            raise DataError("expected a JSON object", where=loc)
        item = _item_from_row(row, str(row.get("id", lineno)), loc)
        if item["id"] in seen:
            raise DataError(f"duplicate id {item['id']!r}", where=loc,
                            hint="give every row its own id (predictions are written per id)")
        seen.add(item["id"])
        items.append(item)
    if not items:
        raise DataError("no items to evaluate", where=str(path))
    return items


def item_scores(output: str, reference: str) -> dict:
    """The scores of one answer: exact match (normalized) and ROUGE-L against its reference."""
    from .metrics import exact_match, rouge_l

    return {"exact_match": exact_match(output, reference), "rouge_l": rouge_l(output, reference)}


def run_tasks(llm, items: list[dict], *, max_new_tokens: int = 128) -> dict:
    """Greedy answers in the checkpoint's chat format; {"summary": task_metrics, "items": per-item rows}."""
    from .metrics import task_metrics

    outputs = [llm.chat(item["messages"], max_new_tokens=max_new_tokens, temperature=0.0) for item in items]
    summary = task_metrics(outputs, [item["reference"] for item in items])
    rows = []
    for item, output in zip(items, outputs):
        row = {"id": item["id"], "prompt": item["prompt"], "reference": item["reference"], "output": output,
               "score": item_scores(output, item["reference"])}
        if len(item["messages"]) > 1:  # a multi-turn item: the prompt alone does not show what was asked
            row["messages"] = item["messages"]
        rows.append(row)
    return {"summary": summary, "items": rows}
