"""The MPT-7B-Instruct mix (mosaicml/dolly_hhrlhf): databricks-dolly-15k plus a filtered first turn of
Anthropic HH-RLHF.

    openseason data prepare dolly-hhrlhf DOLLY.jsonl HH.jsonl.gz --out DIR

Exactly two inputs, Dolly first, then one HH-RLHF split. Dolly rows are read as the `dolly` source reads
them. From each HH-RLHF row only the `chosen` transcript's first Human/Assistant exchange is kept, and
it is dropped when the assistant's reply does what the dataset card says MosaicML filtered out, checked
in this order and counted per reason in report.json (`rejected`) with every dropped row in rejects.jsonl:

    hh_asks_question    the reply contains "?"
    hh_apologizes       "sorry" or "apolog..."
    hh_thanks           "thank..."
    hh_mentions_human   "human"
    hh_first_person     I, I'm, I've, I'd, I'll, me, my, mine, myself (as words)

The card describes the filter in words, not code; these patterns are our reading of it. Records keep
{instruction, input} in meta so the dolly style renders them, and meta.mix says which half each came from.
"""
from __future__ import annotations

import re

from ...errors import OpenseasonError
from ..records import Conversation
from . import dolly
from .base import row_id, text_field
from .hh_rlhf import first_pair

NAME = "dolly-hhrlhf"
DEFAULT_STYLE = "dolly"
MODES = ("sft",)
OPTIONS = ("strip_citation_marks", "categories")  # handed to dolly.read for the Dolly half

FILTERS = (
    ("hh_asks_question", re.compile(r"\?")),
    ("hh_apologizes", re.compile(r"\b(sorry|apolog\w*)\b", re.IGNORECASE)),
    ("hh_thanks", re.compile(r"\bthank\w*", re.IGNORECASE)),
    ("hh_mentions_human", re.compile(r"human", re.IGNORECASE)),
    ("hh_first_person", re.compile(r"\b(I|I'm|I've|I'd|I'll|me|my|mine|myself)\b|\bI\u2019(m|ve|d|ll)\b",
                                   re.IGNORECASE)),
)


def filter_reason(reply: str):
    """The first filter an HH-RLHF assistant reply trips, or None when it is kept."""
    for reason, pattern in FILTERS:
        if pattern.search(reply):
            return reason
    return None


def read(paths, ctx, mode="sft", **options):
    if len(paths) != 2:
        raise OpenseasonError(f"dolly-hhrlhf takes exactly two files, got {len(paths)}",
                              hint="openseason data prepare dolly-hhrlhf DOLLY.jsonl HH.jsonl.gz --out DIR")
    dolly_path, hh_path = paths
    counts = {"dolly": 0, "hh-rlhf": 0}
    for where, record in dolly.read([dolly_path], ctx, **options):
        record.source = NAME
        record.meta["mix"] = "dolly"
        counts["dolly"] += 1
        yield where, record
    for where, row in ctx.rows(hh_path):
        if isinstance(row, dict) and "chosen" not in row and "instruction" in row:
            raise OpenseasonError("the second file looks like Dolly, not HH-RLHF", where=where,
                                  hint="give the Dolly file first and the HH-RLHF file second")
        chosen = text_field(row, "chosen", where, ctx)
        if chosen is None:
            continue
        try:
            instruction, reply = first_pair(chosen)
        except (IndexError, ValueError):
            ctx.malformed(where, "bad_transcript", "no '\\n\\nHuman: ' ... '\\n\\nAssistant: ' pair")
            continue
        if not instruction or not reply:
            ctx.reject(where, "hh_empty")
            continue
        reason = filter_reason(reply)
        if reason:
            ctx.reject(where, reason, reply[:200])
            continue
        counts["hh-rlhf"] += 1
        yield where, Conversation(row_id("hh", hh_path, where), NAME,
                                  [{"role": "user", "content": instruction}, {"role": "assistant", "content": reply}],
                                  {"instruction": instruction, "input": "", "mix": "hh-rlhf"})
    ctx.extra["written_by_source"] = counts
