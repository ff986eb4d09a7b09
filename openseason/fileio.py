"""Small file helpers every stage shares: atomic writes, staged directories with a crash-safe swap,
output-directory locks, JSONL reading with file:line errors, and the one safe YAML loader.

Writes go to a temporary file in the same directory, are fsynced and then renamed over the target,
so a crash or kill -9 leaves either the old file or the new one, never half of one.

Whole directories (checkpoints) are written into a staging directory next to the target and swapped
in by `replace_dir`. Every sibling the swap uses is named `.NAME.KIND-HOST-PID`:

    .NAME.tmp-HOST-PID   being written (incomplete until the swap starts)
    .NAME.new-HOST-PID   complete and fsynced, about to become NAME
    .NAME.old-HOST-PID   the previous NAME, moved aside for the swap

so after a kill at any moment `recover_dir` (called by the next save and by loaders that find NAME
missing) can tell, from the owner's PID being dead, what to roll forward (`new`), roll back (`old`)
and delete (`tmp`, and whatever is left once NAME is in place).
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import gzip
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from .errors import DataError, OpenseasonError, where

# libyaml's loader when present: the same safe semantics, ~15x faster than the pure-Python one.
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def user_cache_dir(*parts: str) -> Path:
    """openseason's cache folder for derived files it can rebuild (embeddings, built kernels):
    OPENSEASON_CACHE, else $XDG_CACHE_HOME/openseason, else ~/.cache/openseason; `parts` below it."""
    root = os.environ.get("OPENSEASON_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "openseason")
    return Path(root, *parts)


def mark_used(path: str | os.PathLike) -> None:
    """Refresh a cached file's time as it is used, so `keep_recent` keeps it (a read-only cache: no-op)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def keep_recent(folder: str | os.PathLike, pattern: str, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently modified files of `folder` matching `pattern` (a cache
    that would otherwise only grow; readers `mark_used` a file when they use it). Files that vanish
    or cannot be deleted meanwhile are skipped; returns the deleted paths."""
    entries = []
    for path in Path(folder).glob(pattern):
        with contextlib.suppress(OSError):
            entries.append((path.stat().st_mtime, path))
    entries.sort(key=lambda entry: entry[0], reverse=True)
    deleted = []
    for _, path in entries[max(0, keep):]:
        with contextlib.suppress(OSError):
            path.unlink()
            deleted.append(path)
    return deleted


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to `path`; on clean exit fsync it and rename it over `path`."""
    path = Path(path)
    refuse_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; our files get the mode open() would give them
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def hash_files(paths) -> str:
    """sha256 over the names and bytes of `paths` (sorted): the fingerprint of a set of files."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _file_mode() -> int:
    """0666 less the process umask (0644 under the usual 022), read without changing it where /proc
    shows it (os.umask can only be read by setting it, which would race other threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, ensure_ascii=False)
        handle.write("\n")


def write_jsonl_atomic(path: str | os.PathLike, rows) -> int:
    """Write an iterable of JSON-able rows, one per line; returns the number written."""
    count = 0
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


class _Utf8Text:
    """A read-only text handle over a UTF-8 file (or .gz) that turns bytes which are not UTF-8, and a
    damaged gzip stream, into DataError at file:line:col instead of a UnicodeDecodeError. Lines are
    decoded one at a time, so the line number is exact; they keep their "\n" / "\r\n" endings."""

    def __init__(self, path: Path, span: Optional[tuple[int, int, int]] = None):
        self.path = path
        self._raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        self._line = 1  # line of the next byte to be decoded
        self._end = None
        if span is not None:  # (start byte, end byte, line number at start): one byte range of the file
            start, self._end, self._line = span
            self._raw.seek(start)
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def _bytes(self, reader):
        try:
            return reader()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(f"cannot decompress: {exc}", where=str(self.path)) from None

    def _decode(self, data: bytes, final: bool) -> str:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            buf = exc.object  # the decoder's held-back bytes (never a newline) + data
            before = buf[:exc.start]
            line = self._line + before.count(b"\n")
            col = exc.start - (before.rfind(b"\n") + 1) + 1
            raise DataError(f"not UTF-8 text (byte 0x{buf[exc.start]:02x})", where=where(self.path, line, col),
                            hint="convert the file to UTF-8") from None
        self._line += data.count(b"\n")
        return text

    def readline(self) -> str:
        if self._end is not None and self._raw.tell() >= self._end:
            raw = b""  # a line belongs to the range its first byte lies in
        else:
            raw = self._bytes(self._raw.readline)
        return self._decode(raw, final=not raw)

    def read(self, size: int = -1) -> str:
        if self._end is not None:
            raise ValueError("a byte range of a file is read line by line")
        raw = self._bytes(lambda: self._raw.read(size) if size >= 0 else self._raw.read())
        return self._decode(raw, final=size < 0 or not raw)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_text(path: str | os.PathLike, span: Optional[tuple[int, int, int]] = None):
    """Open a UTF-8 text file for reading, transparently decompressing `.gz`; bytes that are not
    UTF-8 raise DataError at file:line:col. `span` = (start, end, line) reads only the lines that
    start in bytes [start, end) of an uncompressed file, numbered from `line` (start must be the
    first byte of a line): how distributed readers split one file across workers."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", where=str(path))
    if path.is_dir():
        raise DataError("is a directory, not a file", where=str(path))
    return _Utf8Text(path, span)


SKIP_HINT = "fix the line or pass --on-error skip to record and skip it"
FIX_LINE_HINT = "fix the line (each line is one JSON object)"  # for readers whose verb has no --on-error


def iter_jsonl(path: str | os.PathLike, on_error: str = "fail", errors: list | None = None,
               fail_hint: str = SKIP_HINT, span: Optional[tuple[int, int, int]] = None) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, object) for each non-blank line of a JSONL(.gz) file (of its byte range
    `span`, see `open_text`).

    on_error="fail" raises DataError with file:line, the parse error and `fail_hint` (callers whose
    verb has no --on-error pass their own); "skip" appends {"where", "reason", "error"} to `errors`
    and continues.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    with open_text(path, span) as handle:
        for lineno, line in enumerate(handle, start=span[2] if span else 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                loc = where(path, lineno, exc.colno)
                if on_error == "fail":
                    raise DataError(f"malformed JSON: {exc.msg}", where=loc, hint=fail_hint) from None
                if errors is not None:
                    errors.append({"where": where(path, lineno), "reason": "malformed_json", "error": exc.msg})


def read_json_object(path: str | os.PathLike, error: type[OpenseasonError] = DataError) -> dict:
    """A JSON object from the file `path`, with `error` naming file:line:col for malformed JSON, the
    file for unreadable text or a value that is not an object. A missing file raises FileNotFoundError
    (callers say what it means to miss it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"malformed JSON: {exc.msg}", where=where(path, exc.lineno, exc.colno)) from None
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read file ({exc})", where=str(path)) from None
    if not isinstance(data, dict):
        raise error(f"expected a JSON object, found {type(data).__name__}", where=str(path))
    return data


def read_json_rows(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(position, row) pairs from a JSON array file (position = 1-based index) or a JSONL(.gz) file
    (position = line number); malformed JSON raises DataError with file:line:col."""
    path = Path(path)
    if path.suffix != ".json":
        return list(iter_jsonl(path))
    with open_text(path) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc.msg}", where=where(path, exc.lineno, exc.colno)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON array of rows", where=str(path))
    return list(enumerate(data, start=1))


def append_jsonl(handle, row: Any) -> None:
    """Append one row to an open JSONL file and make it durable before returning."""
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _first_alias(text: str):
    """The mark of the first alias (`*name`, including `<<: *name`) in `text`, or None. Streams parser
    events, so a hostile file costs memory proportional to its size, never to its expansion."""
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, yaml.AliasEvent):
            return event.start_mark
    return None


def parse_yaml(text: str, name: str | os.PathLike, *, line_offset: int = 0,
               error: type[OpenseasonError] = DataError, with_node: bool = False, what: str = "invalid YAML"):
    """Parse one YAML document with safe semantics, refusing aliases ("billion laughs": nine nested
    aliases of nine items expand to 9**9 values when a reader walks them).

    Returns the data, or `(node, data)` with `with_node` (node positions for file:line:col reports;
    node is None for an empty document). Malformed YAML and aliases raise `error` at
    name:line:col (syntax errors start with `what`); `line_offset` is added to lines (YAML cut out of
    a larger file, e.g. front matter).
    """
    def loc(mark):
        return where(name, mark.line + 1 + line_offset, mark.column + 1) if mark else str(name)

    try:
        alias = _first_alias(text)
        if alias is not None:
            raise error("YAML aliases (*name) are not accepted here", where=loc(alias),
                        hint="write the value out in full instead of referring to an &anchor")
        loader = _YamlLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"{what}: {getattr(exc, 'problem', None) or exc}", where=loc(mark)) from None
    except RecursionError:
        raise error("YAML nested too deeply", where=str(name),
                    hint="flatten the structure; a few dozen levels of nesting is plenty") from None
    return (node, data) if with_node else data


def load_yaml(path: str | os.PathLike, *, error: type[OpenseasonError] = DataError, with_node: bool = False):
    """`parse_yaml` on a UTF-8 file (errors name the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error("file not found", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None
    return parse_yaml(text, path, error=error, with_node=with_node)


# -- staged directories ------------------------------------------------------------------------------

_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|new|old)-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)$")
# Test hook: called with "new" (staged dir renamed complete), "old" (previous one moved aside) inside
# replace_dir, so a test can kill the process between the renames. Never set in production.
_swap_hook: Optional[Callable[[str], None]] = None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{_host()}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (a zombie counts as gone: it will write nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # Linux: a killed child not yet reaped is a zombie
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    return True


def _stale_siblings(final: Path) -> list[tuple[str, Path]]:
    """(kind, path) of the swap siblings of `final` whose owner on this host is dead."""
    if not final.parent.is_dir():
        return []
    host, found = _host(), []
    for child in final.parent.iterdir():
        match = _SIBLING.match(child.name)
        if (match and match["name"] == final.name and match["host"] == host
                and not pid_alive(int(match["pid"]))):
            found.append((match["kind"], child))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def recover_dir(final: str | os.PathLike) -> bool:
    """Repair what a process killed inside `replace_dir` left behind, and delete the staging
    directories of dead processes. If `final` is missing, the newest complete copy is moved back:
    a staged `new` one (the swap was under way) or else the `old` one. Returns True if `final`
    was restored. Siblings of live processes (on this host) are never touched."""
    final = Path(final)
    stale = _stale_siblings(final)
    restored = False
    if not final.exists():
        for kind in ("new", "old"):
            candidates = sorted((p for k, p in stale if k == kind), key=_mtime)
            if candidates:
                try:
                    # rename(2) onto a missing name; another process recovering too (ranks of one
                    # run) may have moved it already, or put `final` in place: both are fine
                    os.rename(candidates[-1], final)
                except OSError:
                    pass
                else:
                    fsync_dir(final.parent)
                    restored = True
                break
    for _, path in stale:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
    return restored


def recover_children(parent: str | os.PathLike) -> None:
    """`recover_dir` for every staged directory under `parent` (e.g. the step checkpoints of a run)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    names = {m["name"] for child in parent.iterdir() if (m := _SIBLING.match(child.name))}
    for name in sorted(names):
        recover_dir(parent / name)


def _swapping(final: Path) -> bool:
    """A live writer has moved `final` aside or staged its replacement (it is between renames)."""
    return final.parent.is_dir() and any(
        (m := _SIBLING.match(c.name)) and m["name"] == final.name and m["kind"] in ("new", "old")
        for c in final.parent.iterdir())


def wait_for_dir(final: str | os.PathLike, timeout: float = 5.0) -> bool:
    """Make sure `final` exists if a complete copy of it does: recover after a dead writer, or wait
    (up to `timeout` s) while a live writer is between its two renames. Returns final.exists()."""
    final = Path(final)
    deadline = time.monotonic() + timeout
    while not final.exists():
        recover_dir(final)
        if final.exists() or time.monotonic() > deadline or not _swapping(final):
            break
        time.sleep(0.02)
    return final.exists()


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh empty directory next to `final` to write its new contents into (then `replace_dir`).
    Leftovers of killed writers of `final` are repaired or removed first."""
    final = Path(final)
    refuse_file(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = _sibling(final, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the fully written directory `tmp` into place as `final`, replacing any previous one.

    Crash-safe: the staged copy is fsynced and renamed to `.NAME.new-HOST-PID` (marking it
    complete) before the previous `final` is moved aside, so a kill between the renames leaves a
    complete copy that `recover_dir` moves back into place."""
    tmp, final = Path(tmp), Path(final)
    mode = _file_mode()
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                # one mode for every file of a checkpoint (safetensors writes 0600, open() 0644)
                os.fchmod(handle.fileno(), mode)
                os.fsync(handle.fileno())
        fsync_dir(root)
    new = _sibling(final, "new")
    os.replace(tmp, new)
    fsync_dir(final.parent)
    if _swap_hook is not None:
        _swap_hook("new")
    old = None
    if final.exists():
        old = _sibling(final, "old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        if _swap_hook is not None:
            _swap_hook("old")
    os.replace(new, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- output directories: one writer at a time, staged outputs -------------------------------------------
LOCK_NAME = ".openseason.lock"
STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike):
    """Hold the output directory's lock while the block runs; a second writer gets a clear error
    naming the directory and the holder's PID. The lock is an `fcntl.flock` on DIR/.openseason.lock,
    so the kernel releases it when the holder exits, even after kill -9: it never blocks forever."""
    import fcntl

    directory = Path(directory)
    refuse_file(directory)
    # the top of what mkdir creates (the directory itself, or a missing parent), taken back on failure
    created = next((p for p in reversed((directory, *directory.parents)) if not p.exists()), None)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    failed = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise OpenseasonError(f"another process (PID {holder}) is writing to this directory",
                                  where=str(directory),
                                  hint="wait for it to finish, or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield directory
        except BaseException:
            failed = True
            raise
    finally:
        if failed and created is not None:
            _remove_if_only_lock(directory, created)
        os.close(fd)  # releases the flock; the file stays (unlinking it would race a waiting writer)


def _remove_if_only_lock(directory: Path, top: Path) -> None:
    """A command that created its output directory (and the missing parents up to `top`) and then
    failed takes them back, so no empty --out is left behind; anything else in it (partial output to
    resume) keeps it. Called with the lock still held: a second writer that opened the lock file
    meanwhile finds its directory gone and fails, it never writes into a removed one."""
    with contextlib.suppress(OSError):
        if [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            (directory / LOCK_NAME).unlink()
            for level in (directory, *directory.parents):
                level.rmdir()  # OSError when not empty: stop there
                if level == top:
                    break


def refuse_directory(path: str | os.PathLike) -> None:
    """OpenseasonError when an output file's path is an existing directory (never written into)."""
    if Path(path).is_dir():
        raise OpenseasonError("is a directory; give a file name", where=str(path))


def refuse_file(path: str | os.PathLike) -> None:
    """OpenseasonError when an output directory's path is an existing file (not silently replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OpenseasonError("exists and is a file, not a directory", where=str(path),
                              hint="choose a directory for the output (a new or empty one)")


def foreign_entries(directory: str | os.PathLike, ignore: tuple[str, ...] = ()) -> list[str]:
    """Names in `directory` other than our lock file, staging leftovers and `ignore` (sorted)."""
    directory = Path(directory)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.name != LOCK_NAME and not p.name.startswith(STAGING_PREFIX) and p.name not in ignore)


def refuse_non_empty(directory: str | os.PathLike, overwrite: bool, ignore: tuple[str, ...] = ()) -> None:
    """OpenseasonError when `directory` holds anything (but ours) and `overwrite` is not set."""
    names = foreign_entries(directory, ignore)
    if names and not overwrite:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OpenseasonError(f"output directory is not empty ({shown})", where=str(directory),
                              hint="pass --overwrite to replace its outputs, or choose a new output directory")


@contextlib.contextmanager
def output_staging(directory: str | os.PathLike):
    """A fresh DIR/.staging-PID-RANDOM folder (names unique per writer), removed with whatever is
    left in it when the block ends; move finished files out of it with `os.replace`."""
    directory = Path(directory)
    stage = directory / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        # leftovers of writers that died (kill -9) before cleaning up; we hold the lock, so none is live
        for old in directory.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(old, ignore_errors=True)


def io_error(exc: OSError, directory: str | os.PathLike) -> OpenseasonError:
    """A clear error for an OSError while reading inputs or writing outputs (a full disk, ...)."""
    hint = None
    if exc.errno == errno.ENOSPC:
        hint = "free some disk space (or choose an output directory on another disk) and run again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the permissions of the output directory"
    what = exc.strerror or type(exc).__name__
    return OpenseasonError(f"{what}" + (f" ({exc.filename})" if exc.filename else ""), where=str(directory),
                           hint=hint)
