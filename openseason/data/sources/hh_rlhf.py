"""Anthropic HH-RLHF: {chosen, rejected} transcripts "\\n\\nHuman: ... \\n\\nAssistant: ..." (jsonl/.gz).

Modes:
- `conversations+preferences` (default): the full multi-turn `chosen` conversation, and a preference
  pair (the shared prompt, the chosen and the rejected final replies);
- `conversations`, `preferences`: one of the two;
- `alpaca-libre`: Alpaca Libre's conversion: only `chosen`, only its first Human/Assistant pair
  (instruction, empty input, output), and rows with "http" anywhere in `chosen` dropped (counted as
  `contains_http`).

A few transcripts have two Assistant (or Human) turns in a row; they are joined into one turn with a
blank line, since alternation is what a conversation needs, and counted in the report
(`merged_turns`).
"""
from __future__ import annotations

import re

from ..records import Conversation, PreferencePair
from .alpaca import conversation as alpaca_conversation
from .base import row_id, text_field

NAME = "hh-rlhf"
DEFAULT_STYLE = "chatml"
MODES = ("conversations+preferences", "conversations", "preferences", "alpaca-libre")
MARKER = re.compile(r"\n\n(Human|Assistant):")
ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str) -> tuple[list[dict], int]:
    """Messages of a transcript and how many same-role neighbours were merged; ValueError if the text
    does not start with a Human turn."""
    parts = MARKER.split(text)
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise ValueError("a transcript must start with '\\n\\nHuman:'")
    messages: list[dict] = []
    merged = 0
    for label, content in zip(parts[1::2], parts[2::2]):
        role = ROLE[label]
        content = content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
            merged += 1
        else:
            messages.append({"role": role, "content": content})
    return messages, merged


def first_pair(chosen: str) -> tuple[str, str]:
    """Alpaca Libre's cut: the text between the first "Human:" and the first "Assistant:" marker, and
    from there to the next marker."""
    human = chosen.split("\n\nHuman: ", 1)[1]
    instruction, rest = human.split("\n\nAssistant: ", 1)
    output = re.split(r"\n\n(?:Human|Assistant): ", rest, maxsplit=1)[0]
    return instruction.strip(), output.strip()


def read(paths, ctx, mode="conversations+preferences", **_):
    want_conv = mode in ("conversations+preferences", "conversations")
    want_pref = mode in ("conversations+preferences", "preferences")
    merged_total = 0
    for path in paths:
        for where, row in ctx.rows(path):
            chosen = text_field(row, "chosen", where, ctx)
            if chosen is None:
                continue
            rid = row_id("hh", path, where)
            if mode == "alpaca-libre":
                if "http" in chosen:
                    ctx.reject(where, "contains_http")
                    continue
                try:
                    instruction, output = first_pair(chosen)
                except (IndexError, ValueError):
                    ctx.malformed(where, "bad_transcript", "no '\\n\\nHuman: ' ... '\\n\\nAssistant: ' pair")
                    continue
                if not instruction or not output:
                    ctx.reject(where, "empty")
                    continue
                yield where, alpaca_conversation(NAME, rid, instruction, "", output)
                continue
            rejected = text_field(row, "rejected", where, ctx) if want_pref else ""
            if rejected is None:
                continue
            try:
                messages, merged = parse_transcript(chosen)
                other, merged_r = parse_transcript(rejected) if want_pref else ([], 0)
            except ValueError as exc:
                ctx.malformed(where, "bad_transcript", str(exc))
                continue
            merged_total += merged + merged_r
            if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
                ctx.reject(where, "empty_reply", "chosen transcript does not end with a non-empty Assistant turn")
                continue
            turns = sum(m["role"] == "user" for m in messages)
            if want_conv:
                yield where, Conversation(rid, NAME, messages, {"turns": turns})
            if want_pref:
                if not other or other[-1]["role"] != "assistant" or not other[-1]["content"]:
                    ctx.reject(where, "empty_reply", "rejected transcript does not end with a non-empty Assistant turn")
                elif other[:-1] != messages[:-1]:
                    ctx.reject(where, "prompt_mismatch", "chosen and rejected differ before the final reply")
                else:
                    yield where, PreferencePair(rid, NAME, messages[:-1], messages[-1]["content"],
                                                other[-1]["content"], {"turns": turns})
    ctx.extra["merged_turns"] = merged_total
