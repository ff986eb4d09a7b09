"""Input files cut into byte ranges at line starts, so that workers read one file in parallel.

A line belongs to the range its first byte lies in; a range's first line number is one more than
the newlines before it, which the `count_newlines` tasks count in parallel. Compressed files and
files that are not read line by line (a JSON array, CSV, Parquet, a whole-text document) are one
range each, read as a whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

DEFAULT_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of `path` (index `file` in the stage's input list), or the whole file."""
    file: int
    path: str
    start: int = 0
    end: int = 0
    whole: bool = True
    line: int = 1  # the line number at `start`, once counted

    def span(self) -> Optional[tuple[int, int, int]]:
        """`open_text`'s span argument: None for a whole file."""
        return None if self.whole else (self.start, self.end, self.line)

    def key(self) -> str:
        return f"{self.file:05d}-{self.start:015d}"


def _next_line_start(handle, pos: int) -> int:
    """The first line start at or after byte `pos`."""
    if pos == 0:
        return 0
    handle.seek(pos - 1)
    handle.readline()
    return handle.tell()


def plan(paths: Sequence[str], block_bytes: int, splittable: Callable[[Path], bool]) -> list[Range]:
    """Ranges of about `block_bytes` over `paths`, in input order (empty files give none)."""
    ranges = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        size = path.stat().st_size
        if not splittable(path):
            ranges.append(Range(i, str(raw)))
            continue
        with open(path, "rb") as handle:
            cuts = sorted({_next_line_start(handle, c) for c in range(0, size, block_bytes)} | {size})
        ranges.extend(Range(i, str(raw), a, b, whole=False) for a, b in zip(cuts, cuts[1:]) if b > a)
    return ranges


def count_newlines(path: str, start: int, end: int, chunk: int = 1 << 24) -> int:
    """Task: the newlines in bytes [start, end) of `path`."""
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            block = handle.read(min(chunk, left))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def number_lines(cluster, ranges: list[Range]) -> list[Range]:
    """`ranges` with their first line numbers (the newlines before each are counted in parallel)."""
    split = [r for r in ranges if not r.whole]
    counts = dict(zip(split, cluster.run(count_newlines, [(r.path, r.start, r.end) for r in split])))
    out, before = [], {}
    for r in ranges:
        if r.whole:
            out.append(r)
            continue
        out.append(Range(r.file, r.path, r.start, r.end, False, 1 + before.get(r.file, 0)))
        before[r.file] = before.get(r.file, 0) + counts[r]
    return out


def plain_jsonl(path: Path) -> bool:
    """An uncompressed file whose first non-blank character is not "[" (JSON Lines, not an array)."""
    if path.name.lower().endswith((".gz", ".csv", ".parquet")):
        return False
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return not head.startswith(b"[")
