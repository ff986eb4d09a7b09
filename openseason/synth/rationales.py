"""Distilling step by step (arXiv 2305.02301), data side: rationales from a teacher LLM.

The teacher gets a few-shot chain-of-thought prompt (templates/rationale_prompt.txt, exemplars from
templates/rationale_exemplars.json or your own file) and answers "<reasoning> So the answer is
<label>." Each answer is parsed into rationale and label; the output is the paper's multi-task
data: for every example one row `predict: <input>` -> label and one row `explain: <input>` ->
rationale. The label is the gold one when the input has it (the paper's setting with human labels),
else the teacher's; `drop_mismatched` drops examples whose teacher label disagrees with the gold one.
Every call is logged and resumable (store.py); every example not kept is written to rejected.jsonl
with its reason. An answer with "So the answer is" more than once is read at the last one, and
rejected when the earlier ones name a different label.
"""
from __future__ import annotations

import re
import string
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError, where
from ..fileio import read_json_rows
from ..generation.client import LLMClient, LLMRequest
from .calls import Ask, fit_counts, send_logged, with_prompt
from .prompting import TEMPLATE_DIR, load_template, render
from .report import run_status, write_report
from .self_instruct import cut_demos
from .store import OutputFiles, StageLog, stable_hash

DEFAULT_REQUEST = LLMRequest("", max_tokens=256, temperature=0.0, top_p=1.0, stop=("\nQ:", "\n\nQ:"))
_PHRASE = re.compile(r"\bSo the answer is\s*:?\s*", re.IGNORECASE)


def _label_after(text: str, end: int, last: bool) -> str:
    rest = text[end:].strip().split("\n")[0].strip()
    if not last:  # an earlier answer ends at its sentence
        rest = re.split(r"\.(?:\s|$)", rest)[0].strip()
    if rest.endswith("."):  # the sentence's full stop, not part of the label
        rest = rest[:-1].strip()
    return rest


def parse_rationale(text: str) -> Optional[tuple[str, str]]:
    """(rationale, label) from '<rationale> So the answer is <label>.'; None if the phrase is missing.
    With the phrase more than once, the last one gives the label (the rationale is all before it)."""
    text = text.strip()
    found = list(_PHRASE.finditer(text))
    if not found:
        return None
    last = found[-1]
    return text[:last.start()].strip(), _label_after(text, last.end(), True)


def parse_rationale_checked(text: str) -> tuple[Optional[tuple[str, str]], Optional[str]]:
    """(parsed, None), or (None, the reason to reject): no answer phrase, an empty rationale or
    label, or the phrase more than once with different labels (the teacher changed its mind)."""
    parsed = parse_rationale(text)
    if parsed is None:
        return None, "no 'So the answer is'"
    rationale, label = parsed
    if not label:
        return None, "empty label"
    if not rationale:
        return None, "empty rationale"
    stripped = text.strip()
    earlier = {normalize_label(_label_after(stripped, m.end(), False)) for m in list(_PHRASE.finditer(stripped))[:-1]}
    if earlier - {normalize_label(label)}:
        return None, "answer phrase repeated with different labels"
    return parsed, None


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
               template_dir=None, chunk_size: int = 64, max_tokens: Optional[int] = None) -> dict:
    """Write OUT/rationales.jsonl, OUT/multitask.jsonl ({"input","output","task"}), conversations,
    OUT/rejected.jsonl (every example not kept, with its reason) and a report; the JSONL files are
    written as the run goes.

    max_tokens: completion tokens per call (default 256). Exemplars that do not fit the backend's
    context are cut (first ones first; reported under `fitted`). `teacher_agreement` is the share of
    parsed answers with a gold label whose teacher label matches it, counted before `drop_mismatched`
    drops the others. The report's "ok" is False when calls failed or nothing was kept."""
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, not {max_tokens}")
    request = DEFAULT_REQUEST if max_tokens is None else replace(DEFAULT_REQUEST, max_tokens=max_tokens)
    started = time.perf_counter()
    out = Path(out)
    shots = load_examples(exemplars or TEMPLATE_DIR / "rationale_exemplars.json", rationale_field="rationale")
    demo_list = [f"Q: {s['input']}\nA: {s['rationale']} So the answer is {s['label']}.\n\n" for s in shots]
    template = load_template("rationale_prompt.txt", template_dir)
    examples = load_examples(data, input_field, label_field)
    backend.prepare()
    log = StageLog(out / "logs" / "rationales.jsonl", "rationales",
                   {"template": template, "demos": "".join(demo_list), "params": request.params()})
    counts: dict = {}
    kept = failed = with_gold = agreeing = 0
    results_seen = []

    def count(reason):
        counts[reason] = counts.get(reason, 0) + 1

    files = OutputFiles(out, ["rationales.jsonl", "multitask.jsonl", "rejected.jsonl", "conversations.jsonl"])
    try:
        for lo in range(0, len(examples), chunk_size):
            part = examples[lo:lo + chunk_size]
            items = []
            for ex in part:
                prompt, shorter = cut_demos(
                    lambda d, q=ex["input"]: render(template, demos="".join(d), question=q).rstrip("\n"),
                    demo_list, "exemplars")
                items.append(Ask(log.key(ex["input"]), with_prompt(request, prompt), {"id": ex["id"]}, shorter))
            rows, rejected = [], []
            results = send_logged(backend, log, items)
            results_seen += results
            for ask, ex, res in zip(items, part, results):
                if res is None:
                    failed += 1
                    count("failed call (retried next run)")
                    rejected.append({**ex, "reason": "failed call (retried next run)", "error": log.failure(ask.key)})
                    continue
                parsed, reason = parse_rationale_checked(res["text"])
                if reason:
                    count(reason)
                    rejected.append({**ex, "reason": reason, "answer": res["text"]})
                    continue
                rationale, teacher_label = parsed
                matches = None if ex["label"] is None else normalize_label(teacher_label) == normalize_label(ex["label"])
                if matches is not None:
                    with_gold += 1
                    agreeing += matches
                if matches is False and drop_mismatched:
                    count("teacher label disagrees with gold")
                    rejected.append({**ex, "reason": "teacher label disagrees with gold", "answer": res["text"]})
                    continue
                count("kept" if matches is not False else "kept (teacher label disagrees with gold)")
                rows.append({"id": ex["id"], "input": ex["input"], "label": ex["label"] if ex["label"] is not None
                             else teacher_label, "rationale": rationale, "teacher_label": teacher_label,
                             "label_matches": matches})
            multitask = []
            for row in rows:
                multitask.append({"id": f"{row['id']}-predict", "task": "predict", "input": f"predict: {row['input']}",
                                  "output": row["label"]})
                multitask.append({"id": f"{row['id']}-explain", "task": "explain", "input": f"explain: {row['input']}",
                                  "output": row["rationale"]})
            kept += len(rows)
            files.add("rationales.jsonl", rows)
            files.add("multitask.jsonl", multitask)
            files.add("rejected.jsonl", rejected)
            files.add("conversations.jsonl", [
                {"id": f"rationale-{stable_hash(m['id'], 12)}", "source": "rationales",
                 "messages": [{"role": "user", "content": m["input"]}, {"role": "assistant", "content": m["output"]}],
                 "meta": {"task": m["task"], "example": m["id"].rsplit("-", 1)[0], "generator": backend.describe()}}
                for m in multitask])
            files.flush()
    finally:
        log.close()
        files.close()
    problems = []
    if failed:
        problems.append(f"{failed} call(s) failed; rerun to retry them (see rejected.jsonl)")
    if not kept:
        problems.append(f"nothing kept ({len(examples)} examples; see rejected.jsonl)")
    st = backend.stats
    report = {"run": {"stage": "rationales", "data": str(data), "exemplars": str(exemplars or "built-in"),
                      "drop_mismatched": drop_mismatched, "max_tokens": request.max_tokens,
                      "backend": backend.describe()},
              **run_status(problems),
              "counts": {"examples": len(examples), "kept": kept, "multitask_rows": files.counts["multitask.jsonl"],
                         "rejected": files.counts["rejected.jsonl"], "failed_calls_pending": failed,
                         "with_gold_label": with_gold,
                         "teacher_agreement": (agreeing / with_gold) if with_gold else None},
              "filters": {"rationales": counts},
              "fitted": {k: v for k, v in {"rationales": fit_counts(results_seen)}.items() if v},
              "cost": {"calls": st.calls, "failed_calls": st.failed, "context_exceeded": st.context_exceeded,
                       "retries": st.retries,
                       "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
                       "wall_seconds": round(time.perf_counter() - started, 3)}}
    return write_report(out, report)
