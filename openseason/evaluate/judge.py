"""LLM-as-judge pairwise comparison.

Every pair of answers is judged twice, once in each order, so a judge that prefers whichever answer
comes first cannot decide the outcome: the two verdicts are combined (a win in one order and a loss in
the other is a tie). Each answer's score is the mean of its two scores; the relative score is model A's
total over model B's total, as LLaMA-Adapter V2 and Vicuna reported against ChatGPT.

A judge is any callable `judge(prompt) -> str`: an OpenAI-compatible endpoint, an openseason
checkpoint, or a scripted function in tests.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import DataError
from ..fileio import FIX_LINE_HINT, iter_jsonl

TEMPLATE_PATH = Path(__file__).with_name("templates") / "judge_pairwise.txt"
_SCORE_LINE = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*[,; ]\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*$")


def load_template(path: Optional[str | Path] = None) -> str:
    return Path(path or TEMPLATE_PATH).read_text(encoding="utf-8")


def parse_scores(text: str) -> Optional[tuple[float, float]]:
    """The two scores from the judge's first non-empty line ("7 4", "7, 4", "7/10 4/10"); None if absent."""
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _SCORE_LINE.match(line)
        if match:
            a, b = float(match.group(1)), float(match.group(2))
            if 0 <= a <= 10 and 0 <= b <= 10:
                return a, b
        return None
    return None


@dataclass
class PairJudgement:
    id: str
    question: str
    score_a: Optional[float]          # mean over the two orders
    score_b: Optional[float]
    outcome: str                      # "win" | "tie" | "loss" for model A, or "unparsed"
    orders: list = field(default_factory=list)   # each order: a_first, the judge's reply, its parsed
                                                 # scores (as given), score_a, score_b and its verdict for A
    answer_a: str = ""
    answer_b: str = ""


def _outcome(a: float, b: float) -> str:
    return "win" if a > b else "loss" if a < b else "tie"


def judge_pair(judge: Callable[[str], str], question: str, answer_a: str, answer_b: str,
               template: Optional[str] = None, item_id: str = "") -> PairJudgement:
    template = template or load_template()
    orders = []
    scores_a, scores_b, outcomes = [], [], []
    for first_is_a in (True, False):
        first, second = (answer_a, answer_b) if first_is_a else (answer_b, answer_a)
        prompt = template.format(question=question, answer_1=first, answer_2=second)
        reply = judge(prompt)
        parsed = parse_scores(reply)
        order = {"a_first": first_is_a, "reply": reply, "scores": parsed, "score_a": None, "score_b": None,
                 "verdict": "unparsed"}
        orders.append(order)
        if parsed is None:
            continue
        sa, sb = parsed if first_is_a else (parsed[1], parsed[0])
        order.update(score_a=sa, score_b=sb, verdict=_outcome(sa, sb))
        scores_a.append(sa)
        scores_b.append(sb)
        outcomes.append(_outcome(sa, sb))
    if len(outcomes) < 2:
        return PairJudgement(item_id, question, None, None, "unparsed", orders, answer_a, answer_b)
    if outcomes[0] == outcomes[1]:
        outcome = outcomes[0]
    elif "tie" in outcomes:  # a win (or loss) in one order and a tie in the other leans that way
        outcome = next(o for o in outcomes if o != "tie")
    else:                    # a win in one order and a loss in the other: position decided it
        outcome = "tie"
    return PairJudgement(item_id, question, sum(scores_a) / 2, sum(scores_b) / 2, outcome, orders, answer_a, answer_b)


def summarize(judgements: Sequence[PairJudgement], name_a: str = "A", name_b: str = "B") -> dict:
    parsed = [j for j in judgements if j.outcome != "unparsed"]
    total_a = sum(j.score_a for j in parsed)
    total_b = sum(j.score_b for j in parsed)
    counts = {k: sum(1 for j in parsed if j.outcome == k) for k in ("win", "tie", "loss")}
    return {"model_a": name_a, "model_b": name_b, "judged": len(parsed),
            "unparsed": len(judgements) - len(parsed), **counts,
            "win_rate": counts["win"] / len(parsed) if parsed else 0.0,
            "relative_score": total_a / total_b if total_b else None,
            "mean_score_a": total_a / len(parsed) if parsed else None,
            "mean_score_b": total_b / len(parsed) if parsed else None}


def compare(judge: Callable[[str], str], questions: Sequence[dict], answers_a: dict, answers_b: dict,
            name_a: str = "A", name_b: str = "B", template: Optional[str] = None) -> dict:
    """Judge every question that both models answered; returns {"summary", "judgements"}."""
    missing = [q["id"] for q in questions if q["id"] not in answers_a or q["id"] not in answers_b]
    if missing:
        raise DataError(f"{len(missing)} questions lack an answer from one of the models, e.g. {missing[:5]}")
    template = template or load_template()
    judgements = [judge_pair(judge, q["prompt"], answers_a[q["id"]], answers_b[q["id"]], template, q["id"])
                  for q in questions]
    return {"summary": summarize(judgements, name_a, name_b), "judgements": [asdict(j) for j in judgements]}


def load_instructions(path: str | Path) -> list[dict]:
    """Instruction sets as {"id", "prompt"}: Self-Instruct's user-oriented format (instruction +
    instances[0].input), Alpaca-style (instruction/input) rows, or {"id", "prompt"} rows."""
    items = []
    for lineno, row in iter_jsonl(path, fail_hint=FIX_LINE_HINT):
        if not isinstance(row, dict):
            raise DataError("expected a JSON object", where=f"{path}:{lineno}")
        item_id = str(row.get("id", lineno))
        if "prompt" in row:
            prompt = row["prompt"]
        elif "instruction" in row:
            extra = row.get("input") or ""
            if not extra and row.get("instances"):
                extra = row["instances"][0].get("input") or ""
            prompt = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
        else:
            raise DataError('row has no "instruction" or "prompt"', where=f"{path}:{lineno}")
        items.append({"id": item_id, "prompt": prompt})
    return items


def load_answers(path: str | Path) -> dict:
    """Answers as {"id": ..., "output" | "answer" | "response": ...} JSONL rows -> {id: text}."""
    answers = {}
    for lineno, row in iter_jsonl(path, fail_hint=FIX_LINE_HINT):
        text = next((row[k] for k in ("output", "answer", "response") if isinstance(row, dict) and k in row), None)
        if text is None or "id" not in row:
            raise DataError('answer rows need "id" and one of "output"/"answer"/"response"', where=f"{path}:{lineno}")
        answers[str(row["id"])] = text
    return answers
