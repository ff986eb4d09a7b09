"""Crash-safe stage logs: append-only JSONL keyed by a hash of (stage, stage config, input).

Each call's outcome is appended and fsynced the moment it arrives, as
{"key", "status": "ok" | "failed", "result" | "reason", "input"}. A rerun reads the log, reuses every
"ok" row, and asks again only for keys that are missing or whose last row is "failed" — so a run
killed at any point (even mid-line: a torn last line is cut off on open) continues with no
duplicates and nothing lost. Changing a stage's config (template, sampling parameters, demos)
changes every key, so stale answers are never reused for a different question.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import DataError, where
from ..fileio import append_jsonl

__all__ = ["StageLog", "OutputFiles", "stable_hash"]


def stable_hash(obj: Any, length: int = 24) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys), hex, first `length` characters."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


class StageLog:
    def __init__(self, path: str | os.PathLike, stage: str, config: dict):
        self.path = Path(path)
        self.stage = stage
        self.config_hash = stable_hash({"stage": stage, "config": config})
        self.rows: dict[str, dict] = {}
        self.torn_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            data = handle.read()
        good_end = 0
        lineno = 0
        for raw in data.splitlines(keepends=True):
            lineno += 1
            complete = raw.endswith(b"\n")
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or "key" not in row or "status" not in row:
                    raise ValueError("not a stage-log row")
            except ValueError as exc:
                if not complete:  # the process died while writing this line: drop it
                    self.torn_lines += 1
                    break
                raise DataError(f"corrupt stage-log line ({exc})", where=where(self.path, lineno),
                                hint="this file is written only by openseason; delete the line or the file "
                                     "to recompute what it held") from None
            if not complete:
                # A whole JSON object without its newline: keep it, and finish the line below.
                good_end += len(raw)
                self.rows[row["key"]] = row
                with open(self.path, "ab") as fix:
                    fix.write(b"\n")
                break
            good_end += len(raw)
            self.rows[row["key"]] = row
        if good_end < len(data) and self.torn_lines:
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)

    def key(self, item: Any) -> str:
        return stable_hash({"config": self.config_hash, "input": item})

    def get(self, key: str) -> Optional[Any]:
        """The stored result for `key` if its last row is "ok", else None."""
        row = self.rows.get(key)
        return row.get("result") if row is not None and row["status"] == "ok" else None

    def done(self, key: str) -> bool:
        row = self.rows.get(key)
        return row is not None and row["status"] == "ok"

    def failure(self, key: str) -> Optional[str]:
        row = self.rows.get(key)
        return row.get("reason") if row is not None and row["status"] == "failed" else None

    def record(self, key: str, result: Any, *, input: Any = None) -> None:
        row = {"key": key, "status": "ok", "result": result}
        if input is not None:
            row["input"] = input
        append_jsonl(self._handle, row)
        self.rows[key] = row

    def record_failure(self, key: str, reason: str, *, input: Any = None) -> None:
        row = {"key": key, "status": "failed", "reason": reason}
        if input is not None:
            row["input"] = input
        append_jsonl(self._handle, row)
        self.rows[key] = row

    def counts(self) -> dict:
        ok = sum(1 for r in self.rows.values() if r["status"] == "ok")
        return {"ok": ok, "failed": len(self.rows) - ok}

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OutputFiles:
    """JSONL outputs written as a run goes, so a partial run is usable: each file is started empty
    (the stage logs, not these files, are what a rerun resumes from), then whole chunks of rows are
    appended, flushed and fsynced. A rerun rewrites them from the logs in the same order, so the
    final files equal an uninterrupted run's. (A kill -9 in the middle of a write can leave a torn
    last line in a partial file; the next run rewrites it.)"""

    def __init__(self, directory: str | os.PathLike, names: Sequence[str]):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.handles = {name: open(directory / name, "w", encoding="utf-8") for name in names}
        self.counts = {name: 0 for name in names}

    def add(self, name: str, rows: Sequence[Any]) -> None:
        handle = self.handles[name]
        if rows:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.counts[name] += len(rows)

    def flush(self) -> None:
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self.flush()
        for handle in self.handles.values():
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
