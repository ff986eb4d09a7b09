"""`openseason data prepare`: read a source into a prepared directory.

A prepared directory holds conversations.jsonl / preferences.jsonl / documents.jsonl (whichever kinds
the source produced), report.json ({"read", "written", "rejected": {reason: n}, ...}), rejects.jsonl
(one {"where": file:line, "reason", ...} per dropped row) and prompt_style.json (the style training
and inference must use). Every file is written to a temporary name and renamed when complete, and
report.json goes last, so a directory with a report.json is complete.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from ..errors import DataError, OpenseasonError
from ..fileio import fsync_dir, write_json_atomic, write_jsonl_atomic
from ..prompts import get_style
from .records import KINDS
from .sft import STYLE_FILE
from .sources import get_source
from .sources.base import Context

REPORT = "report.json"
REJECTS = "rejects.jsonl"


def write_style(out_dir, style, **extra) -> None:
    write_json_atomic(Path(out_dir) / STYLE_FILE, {**get_style(style).to_dict(), **extra})


def prepare(source: str, paths, out, mode: Optional[str] = None, on_error: str = "fail",
            style: Optional[str] = None, progress: bool = True, **options) -> dict:
    """Read `paths` with source module `source` and write a prepared directory at `out`.

    `mode` picks the source's flatten mode (its first MODES entry by default); `options` go to the
    source (e.g. langs=["en"], top_k=2, categories=[...], strip_citation_marks=True, columns={...},
    github_filters=True). Returns the report (also written to out/report.json).
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise OpenseasonError("no input files given", hint="openseason data prepare SOURCE FILE... --out DIR")
    out = Path(out)
    if source == "hub":
        from .sources import hub

        as_source = options.pop("as_source", None)
        if not as_source:
            raise OpenseasonError("a Hub dataset needs --as SOURCE (the format of its rows, e.g. dolly)")
        paths = [str(hub.fetch(p, out / ".hub-cache", split=options.pop("split", "train") or "train",
                               config=options.pop("hub_config", None))) for p in paths]
        source = as_source
    module = get_source(source)
    if mode is None:
        mode = module.MODES[0]
    if mode not in module.MODES:
        raise OpenseasonError(f"source {source!r} has no mode {mode!r}", hint=f"choose one of: {', '.join(module.MODES)}")
    for p in paths:
        if not Path(p).exists():
            raise DataError("file not found", where=p)
    style_name = get_style(style or module.DEFAULT_STYLE or "chatml").name
    ctx = Context(on_error)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)  # the report marks a complete directory; not any more
    started = time.time()

    written = {kind: 0 for kind in KINDS}
    tmp = {kind: out / f".{name}.tmp" for kind, name in KINDS.items()}
    try:
        with ExitStack() as stack:
            handles = {kind: stack.enter_context(open(tmp[kind], "w", encoding="utf-8")) for kind in KINDS}
            records = module.read(paths, ctx, mode=mode, **options)
            for where_, record in _progress(records, progress, f"prepare {source}"):
                try:
                    record.validate(where_)
                except DataError as exc:
                    ctx.reject(where_, f"invalid_{record.kind}", str(exc).split(": ", 1)[-1])
                    continue
                handles[record.kind].write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
                written[record.kind] += 1
            for handle in handles.values():
                handle.flush()
                os.fsync(handle.fileno())
        produced = [k for k in KINDS if written[k]] or [_primary_kind(module, mode)]
        for kind, name in KINDS.items():
            if kind in produced:
                os.replace(tmp[kind], out / name)
            else:
                tmp[kind].unlink()
                (out / name).unlink(missing_ok=True)  # a stale file from an earlier run would mislead
        fsync_dir(out)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)

    write_jsonl_atomic(out / REJECTS, ctx.rejects)
    write_style(out, style_name)
    report = {"source": source, "mode": mode, "inputs": paths, "style": style_name, "read": ctx.read,
              "written": sum(written.values()), "written_by_kind": {k: written[k] for k in produced},
              **{k: v for k, v in ctx.report().items() if k != "read"},
              "options": {k: v for k, v in options.items() if v not in (None, False, (), [])},
              "on_error": on_error, "seconds": round(time.time() - started, 3)}
    write_json_atomic(out / REPORT, report)
    return report


def _primary_kind(module, mode) -> str:
    if mode == "documents":
        return "document"
    if mode == "preferences":
        return "preference"
    return "conversation"


def _progress(items, enabled: bool, label: str):
    """Count records as they stream by (rich; silent when stderr is not a terminal)."""
    if not enabled:
        yield from items
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(label + " {task.completed} records"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(label, total=None)
        for item in items:
            yield item
            bar.advance(task)
