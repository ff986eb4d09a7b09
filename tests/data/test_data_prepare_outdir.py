"""`data prepare` output directories: one writer at a time, no overwrite unless asked, staged outputs
(a full disk leaves the old directory intact), and `check_prepared` catches a report that does not
match its files."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openseason.cli import main as cli
from openseason.data import prepare as prepare_mod
from openseason.data.prepare import check_prepared, prepare
from openseason.errors import DataError, OpenseasonError
from openseason.fileio import lock_directory

REPO = Path(__file__).resolve().parents[2]


def _alpaca(path: Path, n: int, tag: str = "") -> Path:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"instruction": f"{tag}task {i}", "input": "", "output": f"answer {i}"}) + "\n")
    return path


def test_non_empty_directory_needs_overwrite(tmp_path):
    src = _alpaca(tmp_path / "a.jsonl", 5)
    out = tmp_path / "out"
    assert prepare("alpaca", [src], out, progress=False)["written"] == 5
    with pytest.raises(OpenseasonError, match="not empty") as info:
        prepare("alpaca", [src], out, progress=False)
    assert str(out) in str(info.value) and "--overwrite" in str(info.value)
    src2 = _alpaca(tmp_path / "b.jsonl", 3, "b ")
    assert prepare("alpaca", [src2], out, progress=False, overwrite=True)["written"] == 3
    assert check_prepared(out)["written"] == 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "conversations.jsonl", "prompt_style.json", "rejects.jsonl", "report.json"]
    assert not list(out.glob(".staging-*"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli(["data", "prepare", "alpaca", str(src), "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    src = _alpaca(tmp_path / "a.jsonl", 5)
    out = tmp_path / "out"
    with lock_directory(out):
        with pytest.raises(OpenseasonError, match=rf"PID {os.getpid()}\) is writing"):
            prepare("alpaca", [src], out, progress=False)
        assert cli(["data", "prepare", "alpaca", str(src), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and f"PID {os.getpid()}" in err and "Traceback" not in err
    assert prepare("alpaca", [src], out, progress=False)["written"] == 5  # released on exit


def test_two_concurrent_writers_leave_a_consistent_directory(tmp_path):
    out = tmp_path / "out"
    srcs = [_alpaca(tmp_path / f"{t}.jsonl", 20_000, t) for t in ("a", "b")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "openseason", "data", "prepare", "alpaca", str(s),
                               "--out", str(out), "--overwrite"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in srcs]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "is writing to this directory" in err and "Traceback" not in err), err
    report = check_prepared(out)
    assert report["written"] == 20_000
    rows = [json.loads(line) for line in open(out / "conversations.jsonl")]
    tags = {r["messages"][0]["content"][0] for r in rows}
    assert len(tags) == 1                              # all rows from one writer, none interleaved
    assert report["inputs"] == [str(srcs[0] if tags == {"a"} else srcs[1])]


def test_full_disk_keeps_the_old_directory_and_prints_no_traceback(tmp_path, monkeypatch, capsys):
    src = _alpaca(tmp_path / "a.jsonl", 5)
    out = tmp_path / "out"
    prepare("alpaca", [src], out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_mod, "write_jsonl_atomic", full)
    src2 = _alpaca(tmp_path / "b.jsonl", 7, "b ")
    assert cli(["data", "prepare", "alpaca", str(src2), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "Traceback" not in err
    assert "free some disk space" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before                            # the old report and outputs are untouched
    assert check_prepared(out)["written"] == 5 and not list(out.glob(".staging-*"))


def test_check_prepared_catches_mismatches(tmp_path):
    src = _alpaca(tmp_path / "a.jsonl", 4)
    out = tmp_path / "out"
    prepare("alpaca", [src], out, progress=False)
    conv = out / "conversations.jsonl"
    good = conv.read_text()
    conv.write_text(good + good.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"conversations.jsonl: holds 5 lines \(5 rows\), report.json says 4"):
        check_prepared(out)
    conv.write_text(good.replace("}\n", "}", 1))           # two rows run together on one line
    with pytest.raises(DataError, match=r"conversations.jsonl:1:\d+: malformed JSON"):
        check_prepared(out)
    conv.unlink()
    with pytest.raises(DataError, match="file is missing"):
        check_prepared(out)
    (out / "report.json").write_text("{")
    with pytest.raises(DataError, match=r"report.json:1:2: malformed JSON"):
        check_prepared(out)
    (out / "report.json").unlink()
    with pytest.raises(DataError, match="no report.json"):
        check_prepared(out)
