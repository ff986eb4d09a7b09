"""`data prepare --engine ray`: a source's rows read in parallel byte ranges, the same directory out.

Each task runs the source's own `read` over one range of one file (a `Context` whose `rows` yields
only that range's rows, numbered with their real lines, so ids and rejects name the same file:line)
and the single-process `write_records` into a part folder; the driver concatenates the parts in
input order and writes the report with `finish_prepared`. Only sources that turn each row into
records on its own (`ROW_INDEPENDENT`) can be split; the others (trees, paired files) are refused.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from ...errors import OpenseasonError
from ...fileio import (atomic_open, lock_directory, output_staging, read_json_object, refuse_non_empty,
                       write_json_atomic, write_jsonl_atomic)
from ..prepare import HUB_CACHE, REJECTS, finish_prepared, write_records
from ..records import KINDS
from ..sources import SOURCES, get_source
from ..sources.base import Context
from .cluster import connect
from .ranges import DEFAULT_BLOCK_BYTES, Range, number_lines, plain_jsonl, plan
from .workdir import WORK, WorkDir


class RangeContext(Context):
    """A run context whose readers see only the rows of one byte range of one file."""

    def __init__(self, on_error: str, rng: Range):
        super().__init__(on_error)
        self.range = rng

    def rows(self, path):
        if not self.range.whole and str(path) == self.range.path:
            return self.jsonl(path, span=self.range.span())
        return super().rows(path)


def check_source(source: str, module) -> None:
    if not getattr(module, "ROW_INDEPENDENT", False):
        splittable = sorted(n for n, m in SOURCES.items() if getattr(m, "ROW_INDEPENDENT", False))
        raise OpenseasonError(f"source {source!r} cannot be split across workers (its records span rows or files)",
                              where="--engine ray", hint=f"use the local engine, or one of: {', '.join(splittable)}")


def read_range(work: str, p: int, rng: Range, source: str, mode: str, on_error: str, options: dict) -> dict:
    """Task: the records of range `p` into part-P/, with its counts (part-P.json, written last)."""
    marker = Path(work) / f"part-{p:06d}.json"
    if not marker.exists():
        folder = Path(work) / f"part-{p:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        ctx = RangeContext(on_error, rng)
        written = write_records(get_source(source).read([rng.path], ctx, mode=mode, **options), folder, ctx)
        write_jsonl_atomic(folder / REJECTS, ctx.rejects)
        write_json_atomic(marker, {"read": ctx.read, "rejected": dict(ctx.rejected), "extra": ctx.extra,
                                   "written": written})
    return read_json_object(marker)


def ray_prepare(module, source, mode, paths, out: Path, on_error, style_name, progress, overwrite, options,
                workers=None, address=None, block_bytes=None) -> dict:
    """`prepare(..., engine="ray")` after `prepare` checked its arguments: see the module docstring."""
    check_source(source, module)
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with connect(address, workers) as cluster, lock_directory(out):
        refuse_non_empty(out, overwrite, ignore=(HUB_CACHE, WORK))
        work = WorkDir(out)
        if overwrite:
            work.remove()
        fingerprint = [[p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in paths]
        settings = {"source": source, "mode": mode, "inputs": fingerprint, "on_error": on_error,
                    "options": options, "style": style_name}
        layout = work.settings(settings, lambda: {"ranges": [vars(r) for r in number_lines(
            cluster, plan(paths, block_bytes or DEFAULT_BLOCK_BYTES, plain_jsonl))]})
        ranges = [Range(**r) for r in layout["ranges"]]
        parts = cluster.run(read_range, [(str(work.path), p, r, source, mode, on_error, options)
                                         for p, r in enumerate(ranges)], f"prepare {source}", progress)
        ctx, written = Context(on_error), Counter()
        for part in parts:
            ctx.row(part["read"])
            ctx.rejected.update(part["rejected"])
            written.update(part["written"])
            if part["extra"]:  # a ROW_INDEPENDENT source keeps no run-wide state
                raise RuntimeError(f"source {source!r} is marked ROW_INDEPENDENT but reports {part['extra']}")
        with output_staging(out) as stage:
            for name in (*KINDS.values(), REJECTS):
                with atomic_open(stage / name, "wb") as handle:
                    for p in range(len(ranges)):
                        with open(work.file(f"part-{p:06d}") / name, "rb") as piece:
                            shutil.copyfileobj(piece, handle, 1 << 20)
            report = finish_prepared(stage, out, module, source, mode, paths, style_name, ctx,
                                     {k: written[k] for k in KINDS}, options, on_error, started,
                                     extra={"engine": {**cluster.stats(), "ranges": len(ranges)}})
        work.remove()
        return report
