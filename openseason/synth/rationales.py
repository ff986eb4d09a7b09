"""Distilling step by step (arXiv 2305.02301), data side: rationales from a teacher LLM.

The teacher gets a few-shot chain-of-thought prompt (templates/rationale_prompt.txt, exemplars from
templates/rationale_exemplars.json or your own file) and answers "<reasoning> So the answer is
<label>." Each answer is parsed into rationale and label; the output is the paper's multi-task
data: for every example one row `predict: <input>` -> label and one row `explain: <input>` ->
rationale. The label is the gold one when the input has it (the paper's setting with human labels),
else the teacher's; `drop_mismatched` drops examples whose teacher label disagrees with the gold one.
Every call is logged and resumable (store.py); unparseable answers are written to rejected.jsonl.
"""
from __future__ import annotations

import re
import string
import time
from pathlib import Path
from typing import Optional

from ..errors import DataError, where
from ..fileio import read_json_rows, write_jsonl_atomic
from ..generation.client import LLMClient, LLMRequest
from .prompting import TEMPLATE_DIR, load_template, render
from .report import write_report
from .self_instruct import send_logged, with_prompt
from .store import StageLog, stable_hash

DEFAULT_REQUEST = LLMRequest("", max_tokens=256, temperature=0.0, top_p=1.0, stop=("\nQ:", "\n\nQ:"))
_ANSWER = re.compile(r"^(.*?)\bSo the answer is\s*:?\s*(.+?)\s*$", re.DOTALL | re.IGNORECASE)


def parse_rationale(text: str) -> Optional[tuple[str, str]]:
    """(rationale, label) from '<rationale> So the answer is <label>.'; None if the phrase is missing."""
    m = _ANSWER.match(text.strip())
    if not m:
        return None
    label = m.group(2).strip().split("\n")[0].strip()
    if label.endswith("."):  # the sentence's full stop, not part of the label
        label = label[:-1].strip()
    return m.group(1).strip(), label


def normalize_label(label: str) -> str:
    return " ".join(label.casefold().translate(str.maketrans("", "", string.punctuation)).split())


def load_examples(path: str | Path, input_field: str = "input", label_field: str = "label",
                  rationale_field: Optional[str] = None) -> list[dict]:
    """Rows from JSONL, or a JSON list (exemplar files)."""
    path = Path(path)
    raw = read_json_rows(path)
    rows = []
    for lineno, row in raw:
        loc = where(path, lineno)
        if not isinstance(row, dict) or not isinstance(row.get(input_field), str):
            raise DataError(f'expected an object with an {input_field!r} string', where=loc,
                            hint="pass --input-field / --label-field for other column names")
        label = row.get(label_field)
        item = {"id": str(row.get("id", f"ex-{lineno}")), "input": row[input_field],
                "label": None if label is None else str(label)}
        if rationale_field:
            if not isinstance(row.get(rationale_field), str):
                raise DataError(f"an exemplar needs a {rationale_field!r} string", where=loc)
            if item["label"] is None:
                raise DataError(f"an exemplar needs a {label_field!r}", where=loc)
            item["rationale"] = row[rationale_field]
        rows.append(item)
    return rows


def rationales(data: str | Path, backend: LLMClient, out: str | Path, *, exemplars: Optional[str | Path] = None,
               input_field: str = "input", label_field: str = "label", drop_mismatched: bool = False,
               template_dir=None, chunk_size: int = 64) -> dict:
    """Write OUT/rationales.jsonl, OUT/multitask.jsonl ({"input","output","task"}), conversations and a report."""
    started = time.perf_counter()
    out = Path(out)
    shots = load_examples(exemplars or TEMPLATE_DIR / "rationale_exemplars.json", rationale_field="rationale")
    demos = "".join(f"Q: {s['input']}\nA: {s['rationale']} So the answer is {s['label']}.\n\n" for s in shots)
    template = load_template("rationale_prompt.txt", template_dir)
    examples = load_examples(data, input_field, label_field)
    log = StageLog(out / "logs" / "rationales.jsonl", "rationales",
                   {"template": template, "demos": demos, "params": DEFAULT_REQUEST.params()})
    kept, rejected, counts = [], [], {}

    def count(reason):
        counts[reason] = counts.get(reason, 0) + 1

    for lo in range(0, len(examples), chunk_size):
        part = examples[lo:lo + chunk_size]
        items = [(log.key(ex["input"]), with_prompt(DEFAULT_REQUEST, render(template, demos=demos, question=ex["input"]).rstrip("\n")),
                  {"id": ex["id"]}) for ex in part]
        for (key, _, _), ex, res in zip(items, part, send_logged(backend, log, items)):
            if res is None:
                count("failed call (retried next run)")
                rejected.append({**ex, "reason": f"failed call: {log.failure(key)}"})
                continue
            parsed = parse_rationale(res["text"])
            if parsed is None or not parsed[0]:
                reason = "no 'So the answer is'" if parsed is None else "empty rationale"
                count(reason)
                rejected.append({**ex, "reason": reason, "answer": res["text"]})
                continue
            rationale, teacher_label = parsed
            matches = None if ex["label"] is None else normalize_label(teacher_label) == normalize_label(ex["label"])
            if matches is False and drop_mismatched:
                count("teacher label disagrees with gold")
                rejected.append({**ex, "reason": "teacher label disagrees with gold", "answer": res["text"]})
                continue
            count("kept" if matches is not False else "kept (teacher label disagrees with gold)")
            kept.append({"id": ex["id"], "input": ex["input"], "label": ex["label"] if ex["label"] is not None
                         else teacher_label, "rationale": rationale, "teacher_label": teacher_label,
                         "label_matches": matches})
    log.close()
    multitask = []
    for row in kept:
        multitask.append({"id": f"{row['id']}-predict", "task": "predict", "input": f"predict: {row['input']}",
                          "output": row["label"]})
        multitask.append({"id": f"{row['id']}-explain", "task": "explain", "input": f"explain: {row['input']}",
                          "output": row["rationale"]})
    write_jsonl_atomic(out / "rationales.jsonl", kept)
    write_jsonl_atomic(out / "multitask.jsonl", multitask)
    write_jsonl_atomic(out / "rejected.jsonl", rejected)
    write_jsonl_atomic(out / "conversations.jsonl", [
        {"id": f"rationale-{stable_hash(m['id'], 12)}", "source": "rationales",
         "messages": [{"role": "user", "content": m["input"]}, {"role": "assistant", "content": m["output"]}],
         "meta": {"task": m["task"], "example": m["id"].rsplit("-", 1)[0], "generator": backend.describe()}}
        for m in multitask])
    st = backend.stats
    with_gold = [r for r in kept if r["label_matches"] is not None]
    report = {"run": {"stage": "rationales", "data": str(data), "exemplars": str(exemplars or "built-in"),
                      "drop_mismatched": drop_mismatched, "backend": backend.describe()},
              "status": "complete" if "failed call (retried next run)" not in counts else "some calls failed; rerun to retry",
              "counts": {"examples": len(examples), "kept": len(kept), "multitask_rows": len(multitask),
                         "teacher_agreement": (sum(r["label_matches"] for r in with_gold) / len(with_gold))
                         if with_gold else None},
              "filters": {"rationales": counts},
              "cost": {"calls": st.calls, "failed_calls": st.failed, "retries": st.retries,
                       "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
                       "wall_seconds": round(time.perf_counter() - started, 3)}}
    return write_report(out, report)
