"""databricks-dolly-15k: {instruction, context, response, category} JSONL.

The context becomes the input part of the user turn (kept apart in meta so the alpaca/dolly styles
can render their Input section). Options: strip Wikipedia citation marks like `[12]`, keep only
some categories.
"""
from __future__ import annotations

import re

from ...errors import OpenseasonError
from ..records import Conversation
from .base import row_id, text_field

NAME = "dolly"
DEFAULT_STYLE = "dolly"
MODES = ("sft",)
ROW_INDEPENDENT = True  # each row on its own: `prepare --engine ray` splits files
CITATION = re.compile(r"\[\d+(?:[,\u2013-]\s*\d+)*\]")


def strip_citations(text: str) -> str:
    """Remove Wikipedia citation marks ([3], [4][5], [1, 2], [3-5]) and the space they leave."""
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", CITATION.sub("", text)) if CITATION.search(text) else text


def read(paths, ctx, mode="sft", strip_citation_marks: bool = False, categories=None, **_):
    wanted = set(categories) if categories else None
    seen: dict = {}
    for path in paths:
        for where, row in ctx.rows(path):
            fields = {k: text_field(row, k, where, ctx) for k in ("instruction", "context", "response")}
            if any(v is None for v in fields.values()):
                continue
            category = row.get("category")
            seen[category] = seen.get(category, 0) + 1
            if wanted is not None and category not in wanted:
                ctx.reject(where, "category", f"category {category!r} not selected")
                continue
            instruction, context, response = fields["instruction"], fields["context"], fields["response"]
            if strip_citation_marks:
                context, response = strip_citations(context), strip_citations(response)
            if not instruction.strip() or not response.strip():
                ctx.reject(where, "empty")
                continue
            user = f"{instruction}\n\n{context}" if context.strip() else instruction
            meta = {"category": category, "instruction": instruction, "input": context if context.strip() else ""}
            yield where, Conversation(row_id("dolly", path, where), NAME,
                                      [{"role": "user", "content": user}, {"role": "assistant", "content": response}],
                                      meta)
    unmatched = sorted(wanted - set(seen)) if wanted is not None else []
    if unmatched:  # a typo would otherwise leave the output short (or empty) with exit status 0
        present = ", ".join(f"{c} ({n})" for c, n in sorted(seen.items(), key=lambda kv: str(kv[0])))
        raise OpenseasonError(f"--category {', '.join(unmatched)} matched no row", where=", ".join(map(str, paths)),
                              hint=f"the categories in the data (rows): {present or 'none'}")
