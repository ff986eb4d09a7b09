"""Label accuracy of a distilled-step-by-step checkpoint: inference uses only the label task.

Each held-out input is asked once with the label prefix ("predict: <input>", greedy) and the answer
is compared with the gold label (exact match after `synth.rationales.normalize_label`); no rationale
is generated to get the label. With `explain=True` the rationale task ("explain: <input>") is asked
too, only to show what the model learnt to explain; it never feeds the label.

The prefixes default to the ones the checkpoint was trained with (its run_card.json options), then
to the paper's "predict: " / "explain: ".
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError, where
from ..fileio import FIX_LINE_HINT, iter_jsonl


def load_labelled(path: str | Path) -> list[dict]:
    """{"id", "input", "label"} rows (the rationales.jsonl of `synth rationales`, or any such JSONL)."""
    path = Path(path)
    file = path / "rationales.jsonl" if path.is_dir() else path
    rows = []
    for lineno, row in iter_jsonl(file, fail_hint=FIX_LINE_HINT):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or row.get("label") is None:
            raise DataError('a row needs an "input" string and a "label"', where=where(file, lineno))
        rows.append({"id": str(row.get("id", lineno)), "input": row["input"], "label": str(row["label"]),
                     "rationale": row.get("rationale")})
    return rows


def trained_prefixes(checkpoint: str | Path) -> tuple[str, str]:
    """(label prefix, rationale prefix) a checkpoint was distilled with; the paper's by default."""
    from ..checkpoint import read_run_card

    options = read_run_card(checkpoint).get("options") or {}
    return options.get("label_prefix") or "predict: ", options.get("rationale_prefix") or "explain: "


def _answers(model, tokenizer, style, texts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    from ..generation import SamplingParams, generate_ids
    from ..prompts import encode_chat

    model.eval()
    out = []
    for lo in range(0, len(texts), batch_size):
        prompts = [encode_chat([{"role": "user", "content": t}], tokenizer, style) for t in texts[lo:lo + batch_size]]
        results = generate_ids(model, prompts, SamplingParams(max_new_tokens=max_new_tokens), tokenizer=tokenizer)
        out += [r.text.strip() for r in results]
    return out


def label_accuracy(model, tokenizer, style, rows: list[dict], *, label_prefix: str = "predict: ",
                   rationale_prefix: Optional[str] = None, max_new_tokens: int = 8,
                   rationale_tokens: int = 48) -> dict:
    """{"n", "label_accuracy", "items": [{"id", "input", "label", "answer", "correct"(, "rationale")}]}.
    The label comes from the label task alone; `rationale_prefix` (if given) adds the generated rationale
    to each item for inspection."""
    from ..synth.rationales import normalize_label

    answers = _answers(model, tokenizer, style, [label_prefix + r["input"] for r in rows], max_new_tokens)
    items = []
    for row, answer in zip(rows, answers):
        items.append({"id": row["id"], "input": row["input"], "label": row["label"], "answer": answer,
                      "correct": normalize_label(answer) == normalize_label(row["label"])})
    if rationale_prefix is not None:
        explained = _answers(model, tokenizer, style, [rationale_prefix + r["input"] for r in rows], rationale_tokens)
        for item, text in zip(items, explained):
            item["rationale"] = text
    hits = sum(item["correct"] for item in items)
    return {"n": len(items), "label_accuracy": hits / max(1, len(items)), "correct": hits,
            "label_prefix": label_prefix, "items": items}


def evaluate_distilled(checkpoint: str | Path, data: str | Path, *, label_prefix: Optional[str] = None,
                       explain: bool = False, rationale_prefix: Optional[str] = None, limit: Optional[int] = None,
                       max_new_tokens: int = 8, device=None) -> dict:
    """`label_accuracy` of a checkpoint on held-out {"input", "label"} rows, with the prefixes it was
    trained with unless given."""
    from ..generation.llm import LLM

    trained_label, trained_rationale = trained_prefixes(checkpoint)
    llm = LLM.load(checkpoint, device=device)
    rows = load_labelled(data)[:limit]
    return label_accuracy(llm.model, llm.tokenizer, llm.chat_format, rows,
                          label_prefix=trained_label if label_prefix is None else label_prefix,
                          rationale_prefix=(rationale_prefix or trained_rationale) if explain else None,
                          max_new_tokens=max_new_tokens)
