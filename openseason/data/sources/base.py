"""What every source module shares: the run context that counts rows and records rejects.

A source is a module with `NAME`, `DEFAULT_STYLE`, `MODES` (first = default) and
`read(paths, ctx, mode, **options)` yielding Conversation / PreferencePair / Document records.
`ROW_INDEPENDENT = True` says that each row becomes records on its own (no state across rows, no
`ctx.extra`), so `data prepare --engine ray` may read the rows of one file in parallel ranges. It
calls `ctx.row()` for each input row it reads, `ctx.reject(where, reason)` for rows a filter drops
(always recorded, never fatal) and `ctx.malformed(where, reason, error)` for rows that cannot be
understood (fatal with on_error="fail", recorded with "skip").
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from ...errors import DataError, OpenseasonError, where as fmt_where
from ...fileio import iter_jsonl, open_text

ON_ERROR = ("fail", "skip")


class Context:
    def __init__(self, on_error: str = "fail"):
        if on_error not in ON_ERROR:
            raise OpenseasonError(f"--on-error must be one of {ON_ERROR}, not {on_error!r}")
        self.on_error = on_error
        self.read = 0
        self.rejected: Counter = Counter()
        self.rejects: list[dict] = []
        self.extra: dict[str, Any] = {}

    def row(self, n: int = 1) -> None:
        self.read += n

    def reject(self, where: str, reason: str, detail: Optional[str] = None, **fields) -> None:
        self.rejected[reason] += 1
        entry = {"where": where, "reason": reason}
        if detail:
            entry["detail"] = detail
        entry.update(fields)
        self.rejects.append(entry)

    def malformed(self, where: str, reason: str, error: str, hint: Optional[str] = None) -> None:
        if self.on_error == "fail":
            raise DataError(f"{reason}: {error}", where=where,
                            hint=hint or "fix the row or pass --on-error skip to record it in rejects.jsonl and go on")
        self.reject(where, reason, error)

    # -- readers that count rows and route parse errors -----------------------------------------------
    def jsonl(self, path, span=None) -> Iterator[tuple[str, Any]]:
        """(file:line, object) for each row of a JSONL(.gz) file (of one byte range: `fileio.open_text`)."""
        errors: list = []
        for lineno, obj in iter_jsonl(path, on_error=self.on_error, errors=errors, span=span):
            self._flush(errors)
            self.row()
            yield fmt_where(path, lineno), obj
        self._flush(errors)

    def _flush(self, errors: list) -> None:
        for err in errors:
            self.row()
            self.reject(err["where"], err["reason"], err["error"])
        errors.clear()

    def json_or_jsonl(self, path) -> Iterator[tuple[str, Any]]:
        """Rows of a JSON array file or of a JSONL file, chosen by the first non-blank character.

        An array element's place is `file:LINE[#I]`: the line its text starts on (to open the file
        there) and its 0-based index in the array (`jq '.[I]'`), so elements that share a line (a
        one-line array) are told apart, and ids made from it stay the same if the file is re-indented."""
        with open_text(path) as handle:
            head = handle.read(4096).lstrip()
        if not head.startswith("["):
            yield from self.jsonl(path)
            return
        with open_text(path) as handle:
            text = handle.read()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            # A JSON array is one document: nothing after the error can be trusted, so always fail.
            raise DataError(f"malformed JSON: {exc.msg}", where=fmt_where(path, exc.lineno, exc.colno),
                            hint="fix the file (a JSON array must parse as a whole)") from None
        lines = _element_lines(text, len(rows))
        for i, obj in enumerate(rows):
            self.row()
            yield fmt_where(path, lines[i] if lines else None) + f"[#{i}]", obj

    def csv_rows(self, path) -> Iterator[tuple[str, dict]]:
        with open_text(path) as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                self.row()
                yield fmt_where(path, reader.line_num), row

    def parquet_rows(self, path) -> Iterator[tuple[str, dict]]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataError(f"cannot read Parquet: {exc}", where=str(path)) from None
        for i, row in enumerate(table.to_pylist()):
            self.row()
            yield f"{path}:row{i}", row

    def rows(self, path) -> Iterator[tuple[str, Any]]:
        """Rows of any supported file, by extension: .jsonl/.json(.gz), .csv, .parquet."""
        name = Path(path).name.lower()
        if name.endswith(".parquet"):
            return self.parquet_rows(path)
        if name.endswith(".csv") or name.endswith(".csv.gz"):
            return self.csv_rows(path)
        return self.json_or_jsonl(path)

    def report(self) -> dict:
        return {"read": self.read, "rejected": dict(sorted(self.rejected.items())), **self.extra}


def _element_lines(text: str, n: int) -> Optional[list[int]]:
    """1-based line of each top-level element of a JSON array written one element per block
    (the indent=4 layout Alpaca files use); None when the layout does not allow it."""
    lines = json_element_lines(text)
    return lines if len(lines) == n else None


def json_element_lines(text: str, key: Optional[str] = None) -> list[int]:
    """1-based line where each element starts of the top-level JSON array (`key` None), or of the array
    under the top-level object's `key` (COCO's "annotations"): file:line for rows of one JSON document."""
    lines: list[int] = []
    depth, lineno, element_depth = 0, 1, 1 if key is None else 2
    in_str = esc = target = expect = False
    current: list[str] = []
    last_key = None
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                if depth == 1:
                    last_key = "".join(current)
            elif depth == 1 and key is not None:
                current.append(ch)
            if ch == "\n":
                lineno += 1
            continue
        if ch == "\n":
            lineno += 1
            continue
        if ch in " \t\r":
            continue
        if target and expect and depth == element_depth and ch != "]":
            lines.append(lineno)
            expect = False
        if ch == '"':
            in_str, current = True, []
        elif ch in "[{":
            if ch == "[" and depth == element_depth - 1 and (key is None or last_key == key):
                target = expect = True
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == element_depth - 1:
                target = False
        elif ch == "," and target and depth == element_depth:
            expect = True
    return lines


def text_field(row: dict, key: str, where: str, ctx: Context, required: bool = True) -> Optional[str]:
    """row[key] as a string; a missing or non-string required field is a malformed row."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None and not required:
        return None
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        ctx.malformed(where, "bad_field", f"field {key!r} must be a string ({got})")
        return None
    return value


def stem(path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


_ARRAY_INDEX = re.compile(r"\[#(\d+)\]$")


def row_id(prefix: str, path, where: str) -> str:
    """A stable record id from the source name, the file stem and the row's place in the file: the line
    of a JSONL row (`alpaca-c-5`), the index of a JSON array element (`alpaca-c#3`, whatever the layout)."""
    place = where[len(str(path)):].lstrip(":") if where.startswith(str(path)) else where
    index = _ARRAY_INDEX.search(place)
    if index:
        return f"{prefix}-{stem(path)}#{index.group(1)}"
    return f"{prefix}-{stem(path)}-{place}"
