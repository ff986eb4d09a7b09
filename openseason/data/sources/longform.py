"""LongForm (akoksal/LongForm): {input, output, source, subset}; input is the instruction, output the
response; source and subset are kept in meta."""
from __future__ import annotations

from ..records import Conversation
from .base import row_id, text_field

NAME = "longform"
DEFAULT_STYLE = "alpaca"
MODES = ("sft",)
ROW_INDEPENDENT = True  # each row on its own: `prepare --engine ray` splits files


def read(paths, ctx, mode="sft", **_):
    for path in paths:
        for where, row in ctx.rows(path):
            instruction = text_field(row, "input", where, ctx)
            output = text_field(row, "output", where, ctx) if instruction is not None else None
            if instruction is None or output is None:
                continue
            if not instruction.strip() or not output.strip():
                ctx.reject(where, "empty")
                continue
            meta = {"source": row.get("source"), "subset": row.get("subset"), "instruction": instruction, "input": ""}
            yield where, Conversation(row_id("longform", path, where), NAME,
                                      [{"role": "user", "content": instruction},
                                       {"role": "assistant", "content": output}], meta)
