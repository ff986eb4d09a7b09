"""ShareGPT: {"id", "conversations": [{"from": human | gpt | system | ..., "value": str}]}.

Leading assistant turns (a conversation that starts mid-way) are cut, neighbouring turns of the same
speaker are joined with a blank line, and a trailing user turn with no reply is cut; these edits are
counted in the report. A conversation with no reply left is rejected.
"""
from __future__ import annotations

from ..records import Conversation
from .base import row_id

NAME = "sharegpt"
DEFAULT_STYLE = "vicuna"
MODES = ("sft",)
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant",
            "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}


def read(paths, ctx, mode="sft", **_):
    edits = {"cut_leading_assistant": 0, "merged_turns": 0, "cut_trailing_user": 0}
    for path in paths:
        for where, row in ctx.rows(path):
            turns = row.get("conversations", row.get("items")) if isinstance(row, dict) else None
            if not isinstance(turns, list):
                ctx.malformed(where, "bad_field", "expected a 'conversations' list of {from, value}")
                continue
            messages: list[dict] = []
            bad = None
            for t in turns:
                role = SPEAKERS.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
                if role is None or not isinstance(t.get("value"), str):
                    bad = f"turn {t!r:.80} needs 'from' (human/gpt/system) and a string 'value'"
                    break
                if role == "system" and messages:
                    bad = "a system turn after the start"
                    break
                if messages and messages[-1]["role"] == role:
                    messages[-1]["content"] += "\n\n" + t["value"]
                    edits["merged_turns"] += 1
                elif role == "assistant" and (not messages or messages[-1]["role"] == "system"):
                    edits["cut_leading_assistant"] += 1
                else:
                    messages.append({"role": role, "content": t["value"]})
            if bad:
                ctx.malformed(where, "bad_turn", bad)
                continue
            while messages and messages[-1]["role"] != "assistant":
                if messages[-1]["role"] == "user":
                    edits["cut_trailing_user"] += 1
                messages.pop()
            if not any(m["role"] == "assistant" for m in messages):
                ctx.reject(where, "no_reply")
                continue
            rid = str(row.get("id")) if row.get("id") is not None else row_id("sharegpt", path, where)
            yield where, Conversation(rid, NAME, messages, {"turns": sum(m["role"] == "user" for m in messages)})
    ctx.extra.update(edits)
