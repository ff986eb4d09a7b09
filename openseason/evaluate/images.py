"""Evaluation of a multimodal checkpoint on held-out image records (the synthetic image suite's eval
split, or any prepared directory whose conversations carry image parts).

Every record's last assistant reply is the reference; the model answers the turns before it, greedily,
through the one engine (`LLM.complete` with the images as media, in batches). Records whose meta
"task" is "caption" are captioning; the others are visual questions:

    vqa       accuracy: normalized exact match (evaluate.metrics.normalize_answer), overall and per family,
              next to two baselines that see no image: "chance" (a uniform guess among the answers each
              question has in the evaluated set) and "majority_baseline" (always each question's most
              common answer in the evaluated set: an oracle, so an upper bound for any blind guesser)
    caption   exact match, corpus BLEU-4 (metrics.corpus_bleu), ROUGE-L (metrics.rouge_l) and CIDEr-D
              consensus (cider.py)

Per-item outputs are kept (id, task, family, question, reference, prediction, correct).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

from ..errors import OpenseasonError
from .cider import cider_d
from .metrics import corpus_bleu, exact_match, normalize_answer, rouge_l


def _question(messages: list[dict]) -> str:
    from ..prompts import message_text

    return message_text(messages[-1])


def answer_records(llm, records: list[dict], base_dir, max_new_tokens: int = 16, batch_size: int = 16) -> list[str]:
    """Greedy answers of `llm` to each record's turns before its last reply."""
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts, media, stops, stop_ids = [], [], (), ()
        for record in chunk:
            ids, items, stops, stop_ids = llm.chat_inputs(record["messages"][:-1], base_dir=base_dir)
            prompts.append(ids)
            media.append(items)
        outs = llm.complete(prompts, media=media, max_new_tokens=max_new_tokens, stop=list(stops),
                            stop_token_ids=list(stop_ids))
        answers.extend(o.text.strip() for o in outs)
    return answers


def image_task_metrics(items: list[dict]) -> dict:
    """The metrics of scored items ({"task", "family", "question", "reference", "prediction"})."""
    out: dict = {"n": len(items)}
    vqa = [i for i in items if i["task"] != "caption"]
    if vqa:
        hits = [exact_match(i["prediction"], i["reference"]) for i in vqa]
        by_question: dict[str, Counter] = defaultdict(Counter)
        for i in vqa:
            by_question[i["question"]][normalize_answer(i["reference"])] += 1
        majority = sum(c.most_common(1)[0][1] for c in by_question.values()) / len(vqa)
        chance = sum(1 / len(by_question[i["question"]]) for i in vqa) / len(vqa)
        families: dict[str, list[float]] = defaultdict(list)
        for i, hit in zip(vqa, hits):
            families[i["family"]].append(hit)
        out["vqa"] = {"n": len(vqa), "accuracy": sum(hits) / len(hits), "chance": chance, "majority_baseline": majority,
                      "by_family": {f: sum(h) / len(h) for f, h in sorted(families.items())}}
    captions = [i for i in items if i["task"] == "caption"]
    if captions:
        preds = [i["prediction"] for i in captions]
        refs = [i["reference"] for i in captions]
        out["caption"] = {"n": len(captions),
                          "exact_match": sum(exact_match(p, r) for p, r in zip(preds, refs)) / len(captions),
                          "bleu": corpus_bleu(preds, refs)["bleu"],
                          "rouge_l": sum(rouge_l(p, r) for p, r in zip(preds, refs)) / len(captions),
                          "cider": cider_d(preds, refs)["cider"]}
    return out


def evaluate_images(llm, data_dir: str | Path, *, limit: Optional[int] = None, max_new_tokens: int = 16,
                    batch_size: int = 16, tasks: Optional[set] = None) -> dict:
    """Score `llm` on the image records of `data_dir` (see the module docstring); returns the metrics
    and the per-item outputs under "items". `tasks` keeps only {"caption", "vqa"} records of those tasks."""
    from ..data.sft import load_conversations
    from ..prompts import message_images

    records = [r for r in load_conversations(data_dir)
               if r["messages"][-1].get("role") == "assistant" and message_images(r["messages"])]
    if tasks is not None:
        records = [r for r in records if _task(r) in tasks]
    records = records[:limit] if limit else records
    if not records:
        raise OpenseasonError("no image records with an assistant reply to evaluate", where=str(data_dir),
                              hint="evaluate on a prepared directory with image parts, e.g. the eval split of "
                                   "`openseason data images`")
    predictions = answer_records(llm, records, data_dir, max_new_tokens, batch_size)
    items = []
    for record, prediction in zip(records, predictions):
        meta = record.get("meta") or {}
        reference = record["messages"][-1]["content"]
        items.append({"id": record.get("id"), "task": _task(record), "family": meta.get("family", "?"),
                      "question": _question(record["messages"][:-1]), "reference": reference,
                      "prediction": prediction, "correct": bool(exact_match(prediction, reference))})
    return {**image_task_metrics(items), "items": items}


def _task(record: dict) -> str:
    return (record.get("meta") or {}).get("task") or "vqa"
