"""`openseason data mix A:0.7 B:0.3 --out DIR`: blend prepared directories in exact proportions.

The total is the largest size the proportions allow without repeating a record (or `total` if
given; `allow_repeat=True` lets a small source be sampled with repetition to reach it). Counts per
source are rounded by largest remainder so they sum to the total exactly; which records are taken
is a seeded shuffle, and the output is shuffled too. Records keep their ids and gain meta.mix_source.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Optional

from ..errors import OpenseasonError
from ..fileio import write_json_atomic, write_jsonl_atomic
from .prepare import REJECTS, REPORT, check_if_prepared, combined_style, writing_prepared
from .sft import STYLE_FILE
from .records import KINDS
from ..fileio import iter_jsonl


def parse_spec(spec: str) -> tuple[str, float]:
    path, sep, weight = spec.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not path or value <= 0:
        raise OpenseasonError(f"bad mix component {spec!r}", hint="write DIR:WEIGHT, e.g. dolly_dir:0.7 oasst_dir:0.3")
    return path, value


def exact_counts(weights: list[float], total: int) -> list[int]:
    """Integers proportional to weights that sum to total (largest remainder)."""
    s = sum(weights)
    raw = [w / s * total for w in weights]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _rows(file: Path) -> list[dict]:
    if not file.exists():
        raise OpenseasonError(f"no {file.name} here", where=str(file.parent),
                              hint="mix prepared directories (openseason data prepare ...)")
    return [row for _, row in iter_jsonl(file)]


def mix(components, out, kind: str = "conversation", total: Optional[int] = None, seed: int = 0,
        allow_repeat: bool = False, overwrite: bool = False, style: Optional[str] = None) -> dict:
    """components: ["DIR:WEIGHT", ...] or [(dir, weight), ...]. `style`: the prompt style of the mix,
    needed when the components store different ones.

    Like `data prepare`, the writer holds `out`'s lock, refuses a non-empty `out` unless `overwrite`,
    and writes everything to a staging folder that is moved in when complete (report.json last)."""
    parsed = [parse_spec(c) if isinstance(c, str) else (str(c[0]), float(c[1])) for c in components]
    if len(parsed) < 1:
        raise OpenseasonError("mix needs at least one DIR:WEIGHT")
    if kind not in KINDS:
        raise OpenseasonError(f"unknown record kind {kind!r}", hint=f"one of: {', '.join(KINDS)}")
    if total is not None and total < 1:
        raise OpenseasonError(f"--total must be >= 1, not {total}", hint="leave it out for the most without repeats")
    out = Path(out)
    if out.resolve() in [Path(p).resolve() for p, _ in parsed]:
        raise OpenseasonError("--out must be a new directory, not one of the components")
    for p, _ in parsed:
        if Path(p).is_dir():
            check_if_prepared(p)  # a damaged or half-written component is an error, not silent data
    started = time.time()
    style_record = combined_style([p for p, _ in parsed], style, what="components")
    pools = [_rows(Path(p) / KINDS[kind]) for p, _ in parsed]
    for (p, _), pool in zip(parsed, pools):
        if not pool:
            raise OpenseasonError(f"{p} has no {kind} records to mix")
    weights = [w for _, w in parsed]
    if total is None:
        s = sum(weights)
        total = min(math.floor(len(pool) / (w / s) + 1e-9) for pool, w in zip(pools, weights))
    counts = exact_counts(weights, total)
    rng = random.Random(seed)
    chosen = []
    for (path, _), pool, n in zip(parsed, pools, counts):
        if n > len(pool) and not allow_repeat:
            raise OpenseasonError(f"{path} has {len(pool)} records but the mix needs {n}",
                                  hint="lower --total, or pass --allow-repeat to sample with repetition")
        order = list(range(len(pool)))
        rng.shuffle(order)
        picks = [order[i % len(order)] for i in range(n)]
        for i in picks:
            row = dict(pool[i])
            row["meta"] = {**(row.get("meta") or {}), "mix_source": path}
            chosen.append(row)
    rng.shuffle(chosen)
    report = {"read": sum(len(p) for p in pools), "written": len(chosen), "written_by_kind": {kind: len(chosen)},
              "rejected": {}, "kind": kind, "seed": seed,
              "components": [{"dir": p, "weight": w, "available": len(pool), "taken": n,
                              "fraction": n / max(total, 1)} for (p, w), pool, n in zip(parsed, pools, counts)]}
    with writing_prepared(out, overwrite) as stage:
        write_jsonl_atomic(stage / KINDS[kind], chosen)
        write_jsonl_atomic(stage / REJECTS, [])
        if style_record is not None:
            write_json_atomic(stage / STYLE_FILE, style_record)
        report["seconds"] = round(time.time() - started, 3)
        write_json_atomic(stage / REPORT, report)
    return report
