"""fileio: atomic writes, staged directories (crash-safe swap, recovery), JSONL/JSON readers with
file:line errors."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from openseason import fileio
from openseason.errors import DataError


def test_atomic_write_replaces_whole_file_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "sub" / "out.json"
    fileio.write_json_atomic(path, {"a": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(path) as handle:
            handle.write("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}   # the old file, whole
    assert os.listdir(path.parent) == ["out.json"]                      # no temp file left


def test_jsonl_round_trip_and_append(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert fileio.write_jsonl_atomic(path, ({"i": i} for i in range(3))) == 3
    with open(path, "a", encoding="utf-8") as handle:
        fileio.append_jsonl(handle, {"i": 3})
    assert [row for _, row in fileio.iter_jsonl(path)] == [{"i": i} for i in range(4)]


def test_iter_jsonl_errors_name_file_line_col(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": 1}\n\n{"broken": \n{"ok": 2}\n')
    with pytest.raises(DataError) as info:
        list(fileio.iter_jsonl(path))
    assert info.value.where.startswith(f"{path}:3:")
    errors: list = []
    rows = list(fileio.iter_jsonl(path, on_error="skip", errors=errors))
    assert rows == [(1, {"ok": 1}), (4, {"ok": 2})]
    assert errors == [{"where": f"{path}:3", "reason": "malformed_json", "error": errors[0]["error"]}]
    with pytest.raises(ValueError):
        list(fileio.iter_jsonl(path, on_error="ignore"))


def test_gzip_and_missing_files(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"x": 1}\n')
    assert list(fileio.iter_jsonl(path)) == [(1, {"x": 1})]
    with pytest.raises(DataError, match="file not found"):
        list(fileio.iter_jsonl(tmp_path / "nope.jsonl"))


def test_read_json_rows_array_and_jsonl(tmp_path):
    array = tmp_path / "rows.json"
    array.write_text('[{"a": 1}, {"a": 2}]')
    assert fileio.read_json_rows(array) == [(1, {"a": 1}), (2, {"a": 2})]
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="JSON array"):
        fileio.read_json_rows(tmp_path / "obj.json")
    (tmp_path / "bad.json").write_text('[\n {"a": 1},\n {"a" 2}\n]')
    with pytest.raises(DataError) as info:
        fileio.read_json_rows(tmp_path / "bad.json")
    assert info.value.where.startswith(f"{tmp_path / 'bad.json'}:3:")


def test_staging_dir_and_replace_dir(tmp_path):
    final = tmp_path / "out"
    tmp = fileio.staging_dir(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-") and not any(tmp.iterdir())
    (tmp / "a.txt").write_text("one")
    fileio.replace_dir(tmp, final)
    tmp = fileio.staging_dir(final)
    (tmp / "b.txt").write_text("two")
    fileio.replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]      # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_alive():
    assert fileio.pid_alive(os.getpid())
    assert not fileio.pid_alive(_dead_pid())
    assert not fileio.pid_alive(0)


@pytest.mark.parametrize("leftovers, restored", [
    (["new", "old"], "new"),     # killed between the renames: roll forward to the complete new copy
    (["old"], "old"),            # only the previous copy survives: roll back
    (["tmp"], None),             # a half-written staging dir is never promoted
])
def test_recover_dir_when_the_target_is_missing(tmp_path, leftovers, restored):
    final, dead = tmp_path / "out", _dead_pid()
    for kind in leftovers:
        d = tmp_path / f".out.{kind}-{fileio._host()}-{dead}"
        d.mkdir()
        (d / "which").write_text(kind)
    assert fileio.recover_dir(final) is (restored is not None)
    if restored:
        assert (final / "which").read_text() == restored
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if restored else [])


def test_recover_children_and_wait_for_dir(tmp_path):
    dead = _dead_pid()
    for name in ("step-000001", "step-000002"):
        d = tmp_path / f".{name}.old-{fileio._host()}-{dead}"
        d.mkdir()
    fileio.recover_children(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000002"]
    assert fileio.wait_for_dir(tmp_path / "step-000001")
    assert not fileio.wait_for_dir(tmp_path / "absent", timeout=0.1)


# -- a failed writer leaves no empty output behind; outputs never replace a file or a directory ----------
def test_failed_writer_takes_back_the_directories_it_created(tmp_path):
    from openseason.fileio import lock_directory

    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError):
        with lock_directory(out):
            raise RuntimeError("the command failed before writing anything")
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with lock_directory(existing / "out"):
            raise RuntimeError
    assert existing.is_dir() and list(existing.iterdir()) == []  # the user's own folder stays

    with pytest.raises(RuntimeError):
        with lock_directory(out):
            (out / "partial.bin").write_bytes(b"resume me")
            raise RuntimeError("killed half-way")
    assert (out / "partial.bin").read_bytes() == b"resume me"  # partial output is kept for a resume


def test_outputs_refuse_a_file_or_a_directory_in_their_place(tmp_path):
    from openseason.errors import OpenseasonError
    from openseason.fileio import atomic_open, lock_directory, staging_dir

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for make in (staging_dir, lambda p: lock_directory(p).__enter__()):
        with pytest.raises(OpenseasonError, match="exists and is a file, not a directory"):
            make(a_file)
    with pytest.raises(OpenseasonError, match="is a directory; give a file name"):
        with atomic_open(tmp_path):
            pass
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_keep_recent_deletes_the_least_recently_used(tmp_path):
    for age, name in enumerate(["e.pt2", "d.pt2", "c.pt2", "b.pt2", "a.pt2"]):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    (tmp_path / "notes.txt").write_text("not a package")
    deleted = fileio.keep_recent(tmp_path, "*.pt2", 3)
    assert sorted(p.name for p in deleted) == ["a.pt2", "b.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt2", "d.pt2", "e.pt2", "notes.txt"]
    assert fileio.keep_recent(tmp_path, "*.pt2", 3) == []
    assert len(fileio.keep_recent(tmp_path, "*.pt2", 0)) == 3 and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert fileio.keep_recent(tmp_path / "missing", "*.pt2", 1) == []


def test_mark_used_keeps_a_file_through_the_next_trim(tmp_path):
    for age, name in enumerate(["c.pt2", "b.pt2", "a.pt2"]):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, (1e9 - age * 100, 1e9 - age * 100))
    fileio.mark_used(tmp_path / "a.pt2")                 # the oldest, just used
    fileio.mark_used(tmp_path / "missing.pt2")           # nothing to refresh: no error
    assert sorted(p.name for p in fileio.keep_recent(tmp_path, "*.pt2", 2)) == ["b.pt2"]
