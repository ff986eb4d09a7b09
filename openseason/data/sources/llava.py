"""LLaVA-style visual instruction data: a JSON array (or JSONL) of
{"id", "image": "coco/train2017/0001.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat ..."},
                                                            {"from": "gpt", "value": "..."}]}.

The `<image>` placeholder marks where the image goes: the human turn holding it becomes content
parts [text before, image, text after] (blank text around the image is dropped, as LLaVA strips the
placeholder's newline). A row with an image and no placeholder gets the image at the start of its
first human turn (LLaVA's own rule), counted as "image_placed_first". `image` may also be a list,
one per placeholder. Rows without `image` are text-only conversations. More placeholders than
images, or a placeholder without an image, is a malformed row (file:line).
"""
from __future__ import annotations

from ..records import Conversation
from .base import row_id
from .images import image_file

NAME = "llava"
DEFAULT_STYLE = "vicuna"
MODES = ("sft",)
PLACEHOLDER = "<image>"
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _parts(text: str, images: list[str]) -> list[dict]:
    pieces = text.split(PLACEHOLDER)
    parts: list[dict] = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip("\n")})
        if i < len(pieces) - 1:
            parts.append({"type": "image", "path": images.pop(0)})
    return parts


def read(paths, ctx, mode="sft", image_root=None, **_):
    placed_first = 0
    for path in paths:
        for where, row in ctx.rows(path):
            turns = row.get("conversations") if isinstance(row, dict) else None
            if not isinstance(turns, list) or not turns:
                ctx.malformed(where, "bad_field", "expected a non-empty 'conversations' list of {from, value}")
                continue
            bad = next((t for t in turns if not isinstance(t, dict) or SPEAKERS.get(str(t.get("from", "")).lower())
                        is None or not isinstance(t.get("value"), str)), None)
            if bad is not None:
                ctx.malformed(where, "bad_turn", f"turn {bad!r:.80} needs 'from' (human/gpt/system) and a string 'value'")
                continue
            names = row.get("image")
            names = [] if names is None else names if isinstance(names, list) else [names]
            slots = sum(t["value"].count(PLACEHOLDER) for t in turns)
            if slots > len(names):
                ctx.malformed(where, "bad_image_placeholder",
                              f"{slots} {PLACEHOLDER} placeholder(s) but {len(names)} image(s)")
                continue
            if slots and slots != len(names):
                ctx.malformed(where, "bad_image_placeholder", f"{slots} placeholder(s) for {len(names)} images")
                continue
            files = [image_file(n, path, image_root, where, ctx) for n in names]
            if any(f is None for f in files):
                continue
            messages = [{"role": SPEAKERS[str(t["from"]).lower()], "content": t["value"]} for t in turns]
            if files and not slots:
                first = next((m for m in messages if m["role"] == "user"), None)
                if first is None:
                    ctx.malformed(where, "bad_turn", "an image but no human turn to put it in")
                    continue
                first["content"] = PLACEHOLDER * len(files) + "\n" + first["content"]
                placed_first += 1
            queue = list(files)
            for m in messages:
                if PLACEHOLDER in m["content"]:
                    if m["role"] != "user":
                        ctx.malformed(where, "bad_image_placeholder", f"{PLACEHOLDER} in a {m['role']} turn")
                        break
                    m["content"] = _parts(m["content"], queue)
            else:
                rid = str(row.get("id")) if row.get("id") is not None else row_id(NAME, path, where)
                yield where, Conversation(rid, NAME, messages, {"images": len(files)})
    ctx.extra["image_placed_first"] = placed_first
