"""Any JSON / JSONL / CSV / Parquet file with a column mapping.

`columns` maps our fields to the file's columns, e.g. {"instruction": "question", "output": "answer"}.
Fields: instruction, input, output, system (single-turn); or messages (a column holding a list of
{role, content} turns, with role_key / content_key and user / assistant role names configurable);
or text (mode "documents"); id and any `meta` columns are carried along.
"""
from __future__ import annotations

from ...errors import OpenseasonError
from ..records import Conversation, Document
from .alpaca import conversation as alpaca_conversation
from .base import row_id

NAME = "generic"
DEFAULT_STYLE = "chatml"
MODES = ("sft", "documents")
ROW_INDEPENDENT = True  # each row on its own: `prepare --engine ray` splits files
FIELDS = {"instruction", "input", "output", "system", "messages", "text", "id", "role_key", "content_key",
          "user_role", "assistant_role", "system_role"}
ROLE_ALIASES = {"user": "user", "human": "user", "prompter": "user", "assistant": "assistant", "gpt": "assistant",
                "bot": "assistant", "system": "system"}


def read(paths, ctx, mode="sft", columns=None, meta_columns=(), **_):
    columns = dict(columns or {})
    unknown = set(columns) - FIELDS
    if unknown:
        raise OpenseasonError(f"unknown column mapping field(s): {', '.join(sorted(unknown))}",
                              hint=f"map some of: {', '.join(sorted(FIELDS))} (e.g. --columns instruction=question)")
    if mode == "documents":
        columns.setdefault("text", "text")
    elif "messages" not in columns:
        columns.setdefault("instruction", "instruction")
        columns.setdefault("output", "output")
    for path in paths:
        for where, row in ctx.rows(path):
            if not isinstance(row, dict):
                ctx.malformed(where, "bad_row", "expected an object / a row with columns")
                continue
            id_col = columns.get("id")  # a CSV row with extra cells has a None key: no accidental match
            rid = str(row[id_col]) if id_col is not None and id_col in row else row_id(NAME, path, where)
            meta = {c: row.get(c) for c in meta_columns}

            def col(field, required=True):
                name = columns.get(field)
                value = row.get(name) if name else None
                if value is None and not required:
                    return None
                if name is not None and name not in row:
                    ctx.malformed(where, "missing_column", f"no column {name!r} (mapped to {field}); the row has: "
                                  + ", ".join(map(repr, (k for k in row if k is not None))))
                    return None
                if not isinstance(value, str):
                    ctx.malformed(where, "bad_field", f"column {name!r} (mapped to {field}) must be text")
                    return None
                return value

            if mode == "documents":
                text = col("text")
                if text is None:
                    continue
                if not text.strip():
                    ctx.reject(where, "empty")
                    continue
                yield where, Document(rid, NAME, text, meta)
            elif "messages" in columns:
                turns = row.get(columns["messages"])
                rk, ck = columns.get("role_key", "role"), columns.get("content_key", "content")
                names = dict(ROLE_ALIASES)
                for ours in ("user", "assistant", "system"):
                    if columns.get(f"{ours}_role"):
                        names[columns[f"{ours}_role"]] = ours
                if not isinstance(turns, list):
                    ctx.malformed(where, "bad_field", f"column {columns['messages']!r} must be a list of turns")
                    continue
                try:
                    messages = [{"role": names[str(t[rk]).lower() if str(t[rk]).lower() in names else t[rk]],
                                 "content": t[ck]} for t in turns]
                except (KeyError, TypeError) as exc:
                    ctx.malformed(where, "bad_turn", f"a turn needs {rk!r} (a known role) and {ck!r}: {exc}")
                    continue
                yield where, Conversation(rid, NAME, messages, meta)
            else:
                instruction = col("instruction")
                output = col("output") if instruction is not None else None
                if instruction is None or output is None:
                    continue
                input_ = col("input", required=False)
                system = col("system", required=False)
                if not instruction.strip() or not output.strip():
                    ctx.reject(where, "empty")
                    continue
                conv = alpaca_conversation(NAME, rid, instruction, input_, output, meta)
                if system:
                    conv.messages.insert(0, {"role": "system", "content": system})
                yield where, conv
