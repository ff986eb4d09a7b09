"""Alpaca format: a JSON array or JSONL of {instruction, input, output}.

An empty input or Self-Instruct's `<noinput>` means no input. Rows of Alpaca Libre's work files carry
a `status`; only "ok" rows are kept (the others are recorded as rejects with their status), as
Alpaca Libre's own export does. An `<nooutput>` output is rejected.
"""
from __future__ import annotations

from ..records import Conversation
from .base import row_id, text_field

NAME = "alpaca"
DEFAULT_STYLE = "alpaca"
MODES = ("sft",)
ROW_INDEPENDENT = True  # each row on its own: `prepare --engine ray` splits files
NO_INPUT = {"", "<noinput>", "<no input>", "noinput"}


def conversation(source, rid, instruction, input_, output, meta=None) -> Conversation:
    input_ = "" if input_ is None or input_.strip().lower() in NO_INPUT else input_
    user = f"{instruction}\n\n{input_}" if input_ else instruction
    return Conversation(rid, source, [{"role": "user", "content": user}, {"role": "assistant", "content": output}],
                        {"instruction": instruction, "input": input_, **(meta or {})})


def read(paths, ctx, mode="sft", **_):
    for path in paths:
        for where, row in ctx.rows(path):
            instruction = text_field(row, "instruction", where, ctx)
            output = text_field(row, "output", where, ctx) if instruction is not None else None
            input_ = text_field(row, "input", where, ctx, required=False) if output is not None else None
            if instruction is None or output is None:
                continue
            status = row.get("status")
            if status is not None and status != "ok":
                ctx.reject(where, f"status_{str(status).replace(' ', '_')}")
                continue
            if not instruction.strip():
                ctx.reject(where, "empty_instruction")
                continue
            if not output.strip() or output.strip().lower() == "<nooutput>":
                ctx.reject(where, "empty_output")
                continue
            yield where, conversation(NAME, row_id("alpaca", path, where), instruction,
                                      input_, output)
