"""RedPajama v1 style documents: {text, meta} JSONL -> Document records.

RedPajama's GitHub slice kept a file only if its longest line was at most 1000 characters, its mean
line length at most 100, and at least 25% of its characters were alphanumeric. These are available
as filters (`github_filters=True` turns on all three with those thresholds, or set each one); every
dropped document is recorded with the rule it broke.
"""
from __future__ import annotations

from ...errors import OpenseasonError
from ..records import Document
from .base import row_id, text_field

NAME = "redpajama"
DEFAULT_STYLE = "plain"
MODES = ("documents",)
ROW_INDEPENDENT = True  # each row on its own: `prepare --engine ray` splits files
GITHUB = {"max_line_length": 1000, "mean_line_length": 100.0, "min_alnum_fraction": 0.25}


def line_stats(text: str) -> tuple[int, float, float]:
    """(longest line, mean line length, alphanumeric fraction) of a document."""
    lines = text.splitlines() or [""]
    lengths = [len(line) for line in lines]
    alnum = sum(ch.isalnum() for ch in text)
    return max(lengths), sum(lengths) / len(lengths), alnum / max(len(text), 1)


def read(paths, ctx, mode="documents", github_filters: bool = False, max_line_length=None, mean_line_length=None,
         min_alnum_fraction=None, **_):
    limits = dict(GITHUB) if github_filters else {}
    for key, value in (("max_line_length", max_line_length), ("mean_line_length", mean_line_length),
                       ("min_alnum_fraction", min_alnum_fraction)):
        if value is not None:
            if value < 0 or (key == "min_alnum_fraction" and value > 1):
                raise OpenseasonError(f"--{key.replace('_', '-')} must be "
                                      + ("in [0, 1]" if key == "min_alnum_fraction" else ">= 0") + f", not {value}")
            limits[key] = value
    for path in paths:
        for where, row in ctx.rows(path):
            text = text_field(row, "text", where, ctx)
            if text is None:
                continue
            if not text.strip():
                ctx.reject(where, "empty")
                continue
            if limits:
                longest, mean, alnum = line_stats(text)
                if longest > limits.get("max_line_length", float("inf")):
                    ctx.reject(where, "max_line_length", f"{longest} > {limits['max_line_length']}")
                    continue
                if mean > limits.get("mean_line_length", float("inf")):
                    ctx.reject(where, "mean_line_length", f"{mean:.1f} > {limits['mean_line_length']}")
                    continue
                if alnum < limits.get("min_alnum_fraction", 0.0):
                    ctx.reject(where, "alnum_fraction", f"{alnum:.3f} < {limits['min_alnum_fraction']}")
                    continue
            meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
            yield where, Document(row_id(NAME, path, where), NAME, text, meta)
