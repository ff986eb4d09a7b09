"""`openseason data prepare`: read a source into a prepared directory.

A prepared directory holds conversations.jsonl / preferences.jsonl / documents.jsonl (whichever kinds
the source produced), report.json ({"read", "written", "rejected": {reason: n}, ...}), rejects.jsonl
(one {"where": file:line, "reason", ...} per dropped row) and prompt_style.json (the style training
and inference must use). One writer at a time holds the directory's lock; every file is written in a
staging folder and moved in when all are complete, report.json last, so a directory with a
report.json is complete; `check_prepared` verifies that its files match it.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from ..errors import DataError, OpenseasonError, where
from ..fileio import (fsync_dir, io_error, iter_jsonl, lock_directory, output_staging, read_json_object,
                      refuse_non_empty, write_json_atomic, write_jsonl_atomic)
from ..prompts import get_style
from .engine import engine_for
from .records import KINDS
from .sft import STYLE_FILE, prepared_style
from .sources import IMAGE_SOURCES, get_source
from .sources.base import Context

REPORT = "report.json"
REJECTS = "rejects.jsonl"
HUB_CACHE = ".hub-cache"
CLUSTERS = "clusters.jsonl"  # data dedup
# every file a prepare / dedup / mix may leave in a prepared directory (besides report.json)
PREPARED_OUTPUTS = (*KINDS.values(), REJECTS, STYLE_FILE, CLUSTERS)


def write_style(out_dir, style, **extra) -> None:
    write_json_atomic(Path(out_dir) / STYLE_FILE, {**get_style(style).to_dict(), **extra})


def combined_style(dirs, style: Optional[str] = None, what: str = "inputs") -> Optional[dict]:
    """The prompt_style.json of a directory combined from the prepared `dirs` (dedup, mix): the named
    `style` if given, else the one style they share (None when none stores one). Inputs of different
    styles are an error unless a style is named: keeping one silently would train rows prepared for
    another template in the wrong one."""
    if style is not None:
        return {**get_style(style).to_dict(), "combined_from": {str(d): prepared_style(d) for d in dirs}}
    found = {str(d): name for d in dirs if (name := prepared_style(d)) is not None}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{d} ({name})" for d, name in found.items())
        raise OpenseasonError(f"the {what} have different prompt styles: {listed}",
                              hint="name the style of the result with --style NAME (style= in Python), or combine "
                                   "directories prepared with one style")
    if not found:
        return None
    first = next(iter(found))
    return read_json_object(Path(first) / STYLE_FILE)


def prepare(source: str, paths, out, mode: Optional[str] = None, on_error: str = "fail",
            style: Optional[str] = None, progress: bool = True, overwrite: bool = False, engine: str = "local",
            workers: Optional[int] = None, address: Optional[str] = None, block_bytes: Optional[int] = None,
            **options) -> dict:
    """Read `paths` with source module `source` and write a prepared directory at `out`.

    `mode` picks the source's flatten mode (its first MODES entry by default); `options` go to the
    source (e.g. langs=["en"], top_k=2, categories=[...], strip_citation_marks=True, columns={...},
    github_filters=True). Returns the report (also written to out/report.json).

    The writer holds `out`'s lock (a second writer gets an error naming the holder's PID) and refuses
    a directory that holds anything unless `overwrite`. Every output is written to a staging folder
    first; only when all are complete is the old report.json removed, the outputs moved in, and the
    new report.json written last. An I/O error (a full disk) leaves the old outputs as they were.

    `engine="ray"` reads the files in byte ranges as `workers` parallel Ray tasks (on the cluster at
    `address`; a local one when none runs), for the sources whose rows are independent; the
    directory is the same (report.json adds the engine). An unfinished run resumes.
    """
    engine = engine_for(engine, workers=workers, address=address, block_bytes=block_bytes)
    paths = [str(p) for p in paths]
    if not paths:
        raise OpenseasonError("no input files given", hint="openseason data prepare SOURCE FILE... --out DIR")
    out = Path(out)
    hub_ids = None
    if source == "hub":
        as_source = options.pop("as_source", None)
        if not as_source:
            raise OpenseasonError("a Hub dataset needs --as SOURCE (the format of its rows, e.g. dolly)")
        hub_ids, hub_split, hub_config = paths, options.pop("split", "train") or "train", options.pop("hub_config", None)
        source = as_source
    module = get_source(source)
    if options.get("image_root") and source not in IMAGE_SOURCES:
        raise OpenseasonError(f"--image-root only applies to the {' and '.join(IMAGE_SOURCES)} sources")
    if options.get("image_root"):
        if not Path(options["image_root"]).is_dir():
            raise DataError("image folder not found", where=str(options["image_root"]))
        options["image_root"] = str(Path(options["image_root"]).resolve())
    if mode is None:
        mode = module.MODES[0]
    if mode not in module.MODES:
        raise OpenseasonError(f"source {source!r} has no mode {mode!r}", hint=f"choose one of: {', '.join(module.MODES)}")
    check_source_options(module, source, mode, options)
    if hub_ids is None:
        for p in paths:
            if not Path(p).exists():
                raise DataError("file not found", where=p)
    style_name = get_style(style or module.DEFAULT_STYLE or "chatml").name
    if engine == "ray":
        if hub_ids is not None:
            raise OpenseasonError("a Hub dataset is read by one process", where="--engine ray",
                                  hint="download it with the local engine, then prepare its files with --engine ray")
        from .distributed.prepare import ray_prepare

        try:
            return ray_prepare(module, source, mode, paths, out, on_error, style_name, progress, overwrite, options,
                               workers=workers, address=address, block_bytes=block_bytes)
        except OSError as exc:
            raise io_error(exc, out) from None
    try:
        with lock_directory(out):
            refuse_non_empty(out, overwrite, ignore=(HUB_CACHE,))
            if hub_ids is not None:
                from .sources import hub

                paths = [str(hub.fetch(p, out / HUB_CACHE, split=hub_split, config=hub_config)) for p in hub_ids]
            return _write_prepared(module, source, mode, paths, out, on_error, style_name, progress, options)
    except OSError as exc:  # a full disk, a read-only directory: a clear error, the old outputs intact
        raise io_error(exc, out) from None


# the CLI flag of each source option (the keyword of `prepare`), for errors that name what the user typed
OPTION_FLAGS = {"langs": "--lang", "top_k": "--top-k", "val_fraction": "--val-fraction", "categories": "--category",
                "strip_citation_marks": "--strip-citations", "columns": "--columns", "meta_columns": "--meta-column",
                "github_filters": "--github-filters", "max_line_length": "--max-line-length",
                "mean_line_length": "--mean-line-length", "min_alnum_fraction": "--min-alnum-fraction",
                "as_source": "--as", "split": "--split"}


def source_options(module) -> set[str]:
    """The options a source reads: its OPTIONS, else the keyword parameters of its `read`."""
    declared = getattr(module, "OPTIONS", None)
    if declared is not None:
        return set(declared)
    params = inspect.signature(module.read).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"paths", "ctx", "mode"}


def check_source_options(module, source: str, mode: str, options: dict) -> None:
    """An option the source (or its mode) does not read is an error: `--lang` on Dolly, which has no
    languages, or `--top-k` outside oasst1's `--mode top-k`, would otherwise be silently ignored."""
    accepted = source_options(module)
    for key, value in options.items():
        if value is None:
            continue
        flag = OPTION_FLAGS.get(key, key)
        if key in ("as_source", "split"):
            raise OpenseasonError(f"{flag} applies only to the hub source (PATH is a Hugging Face dataset id)")
        if key not in accepted:
            takes = ", ".join(sorted(OPTION_FLAGS.get(k, k) for k in accepted)) or "no options"
            raise OpenseasonError(f"{flag} does not apply to the {source} source", hint=f"{source} takes: {takes}")
        modes = getattr(module, "MODE_OPTIONS", {}).get(key)
        if modes and mode not in modes:
            raise OpenseasonError(f"{flag} applies only to --mode {' / '.join(modes)}, not --mode {mode}",
                                  hint=f"add --mode {modes[0]}, or drop {flag}")


def write_records(records, directory: Path, ctx: Context, progress: bool = False, label: str = "") -> dict:
    """Validate `records` ((where, record) pairs) and write them to the kinds' files in `directory`
    (rejecting invalid ones in `ctx`); returns the rows written per kind."""
    written = {kind: 0 for kind in KINDS}
    with ExitStack() as stack:
        handles = {kind: stack.enter_context(open(directory / name, "w", encoding="utf-8"))
                   for kind, name in KINDS.items()}
        for where_, record in _progress(records, progress, label):
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
    return written


def finish_prepared(stage: Path, out: Path, module, source, mode, paths, style_name, ctx: Context, written: dict,
                    options: dict, on_error: str, started: float, extra: Optional[dict] = None) -> dict:
    """With every kind's file and rejects.jsonl in `stage`: write the style and report.json, drop the
    kinds' files that stayed empty, and publish the directory. Returns the report."""
    produced = [k for k in KINDS if written[k]] or [_primary_kind(module, mode)]
    write_style(stage, style_name)
    report = {"source": source, "mode": mode, "inputs": paths, "style": style_name, "read": ctx.read,
              "written": sum(written.values()), "written_by_kind": {k: written[k] for k in produced},
              **{k: v for k, v in ctx.report().items() if k != "read"},
              "options": {k: v for k, v in options.items() if v not in (None, False, (), [])},
              "on_error": on_error, **(extra or {}), "seconds": round(time.time() - started, 3)}
    write_json_atomic(stage / REPORT, report)
    for kind, name in KINDS.items():
        if kind not in produced:
            (stage / name).unlink()
    publish_prepared(stage, out)
    return report


def _write_prepared(module, source, mode, paths, out: Path, on_error, style_name, progress, options) -> dict:
    ctx = Context(on_error)
    started = time.time()
    with output_staging(out) as stage:
        written = write_records(module.read(paths, ctx, mode=mode, **options), stage, ctx, progress,
                                f"prepare {source}")
        write_jsonl_atomic(stage / REJECTS, ctx.rejects)
        return finish_prepared(stage, out, module, source, mode, paths, style_name, ctx, written, options,
                               on_error, started)


@contextlib.contextmanager
def writing_prepared(out, overwrite: bool = False, ignore: tuple[str, ...] = ()):
    """The writer's side of a prepared directory (dedup, mix): hold `out`'s lock, refuse a non-empty
    directory unless `overwrite`, yield a staging folder to write every output into (report.json
    included), and publish them when the block ends cleanly. An OSError (a full disk) is a clear
    error and leaves the old outputs as they were."""
    out = Path(out)
    try:
        with lock_directory(out):
            refuse_non_empty(out, overwrite, ignore=ignore)
            with output_staging(out) as stage:
                yield stage
                publish_prepared(stage, out)
    except OSError as exc:
        raise io_error(exc, out) from None


def publish_prepared(stage: Path, out: Path) -> None:
    """Move the complete outputs in `stage` into the prepared directory `out` (whose lock the caller
    holds). The old report.json goes first and the new one comes last, so a crash in between leaves a
    directory that readers refuse (no report), never a mixed one they trust. Known outputs of an
    earlier run that this one did not produce are removed: a stale file would mislead."""
    names = sorted(p.name for p in stage.iterdir() if p.name != REPORT)
    (out / REPORT).unlink(missing_ok=True)
    fsync_dir(out)
    for name in PREPARED_OUTPUTS:
        if name not in names:
            (out / name).unlink(missing_ok=True)
    for name in names:
        os.replace(stage / name, out / name)
    fsync_dir(out)
    os.replace(stage / REPORT, out / REPORT)
    fsync_dir(out)


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


def read_report(prepared_dir) -> dict:
    file = Path(prepared_dir) / REPORT
    if not file.exists():
        raise DataError("not a complete prepared directory (no report.json)", where=str(prepared_dir),
                        hint="run `openseason data prepare` (or dedup / mix) to make one")
    return read_json_object(file)


def check_if_prepared(directory) -> Optional[dict]:
    """`check_prepared` for a directory whose report.json is a data stage's (prepare, dedup, mix: it
    counts what was `written`); None when it has no report.json or another stage's (a synth run report
    counts per filter and has no per-file counts to check). Readers of conversations call this."""
    if not (Path(directory) / REPORT).is_file():
        return None
    report = read_report(directory)
    if "written" not in report and "written_by_kind" not in report:
        return None
    return check_prepared(directory)


def check_prepared(prepared_dir) -> dict:
    """The report of a prepared directory whose files match it: for each kind the report counts,
    the file exists, every line parses as a JSON object, and the line count is the report's. Returns
    the report; DataError naming the file (and line) otherwise. Readers call this before trusting
    a directory: two writers or a crash mid-swap must not pass as complete data."""
    directory = Path(prepared_dir)
    report = read_report(directory)
    file = directory / REPORT
    by_kind = report.get("written_by_kind")
    if not isinstance(by_kind, dict) or not all(k in KINDS and isinstance(n, int) and not isinstance(n, bool)
                                                for k, n in by_kind.items()):
        raise DataError("report.json has no valid written_by_kind counts", where=str(file),
                        hint="prepare the directory again")
    if report.get("written") != sum(by_kind.values()):
        raise DataError(f"report.json says written={report.get('written')!r} but its kinds add up to "
                        f"{sum(by_kind.values())}", where=str(file), hint="prepare the directory again")
    for kind, expected in by_kind.items():
        path = directory / KINDS[kind]
        if not path.exists():
            raise DataError(f"report.json counts {expected} {kind} rows but the file is missing", where=str(path),
                            hint="prepare the directory again")
        count = 0
        for lineno, row in iter_jsonl(path):
            if not isinstance(row, dict):
                raise DataError(f"a {kind} row must be a JSON object", where=where(path, lineno))
            count += 1
        with open(path, "rb") as handle:
            lines = sum(1 for _ in handle)
        if count != expected or lines != expected:
            raise DataError(f"holds {lines} lines ({count} rows), report.json says {expected}", where=str(path),
                            hint="the directory was written by two processes or damaged; prepare it again")
    return report
