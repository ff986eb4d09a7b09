"""Every writer of a data directory (dedup, mix, tokenize) holds its lock and refuses a non-empty --out
unless --overwrite (tokenize resumes its own partial output); readers of prepared directories check
them against report.json; a malformed prompt_style.json is a located error."""
from __future__ import annotations

import json
import os

import pytest

from openseason.cli import main as cli
from openseason.data.dedup import dedup
from openseason.data.mix import mix
from openseason.data.prepare import check_prepared, prepare
from openseason.data.sft import load_conversations, prepared_style
from openseason.data.tokenize import tokenize_documents
from openseason.errors import DataError, OpenseasonError
from openseason.fileio import lock_directory


def _prepared(tmp_path, name: str, n: int = 6):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"{name} task number {i} " * 3, "input": "",
                                       "output": f"answer {i}"}) + "\n" for i in range(n)))
    return prepare("alpaca", [src], tmp_path / name, progress=False) and tmp_path / name


@pytest.fixture()
def dirs(tmp_path):
    return _prepared(tmp_path, "a"), _prepared(tmp_path, "b")


@pytest.fixture()
def tok_dir(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok")
    return tmp_path / "tok"


WRITERS = {
    "dedup": lambda a, b, out, **kw: dedup([a, b], out, **kw),
    "mix": lambda a, b, out, **kw: mix([f"{a}:0.5", f"{b}:0.5"], out, **kw),
}


@pytest.mark.parametrize("verb", sorted(WRITERS))
def test_dedup_and_mix_lock_refuse_and_overwrite(tmp_path, dirs, verb, capsys):
    a, b = dirs
    write = WRITERS[verb]
    out = tmp_path / "out"
    with lock_directory(out):  # another writer holds it
        with pytest.raises(OpenseasonError, match=rf"PID {os.getpid()}\) is writing"):
            write(a, b, out)
    first = write(a, b, out)
    assert check_prepared(out)["written"] == first["written"] > 0  # a complete prepared directory
    assert not list(out.glob(".staging-*"))
    with pytest.raises(OpenseasonError, match="not empty"):
        write(a, b, out)
    (out / "notes.txt").write_text("mine")
    argv = (["data", "dedup", str(a), str(b)] if verb == "dedup" else ["data", "mix", f"{a}:0.5", f"{b}:0.5"])
    assert cli([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert cli([*argv, "--out", str(out), "--overwrite"]) == 0
    assert check_prepared(out)["written"] == first["written"]
    assert len(load_conversations(out)) == first["written"]


def test_tokenize_lock_refuse_resume_and_overwrite(tmp_path, tok_dir, dirs, capsys):
    a, _ = dirs
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(30)))
    out = tmp_path / "tokens"
    with lock_directory(out):
        with pytest.raises(OpenseasonError, match=rf"PID {os.getpid()}\) is writing"):
            tokenize_documents([docs], tok_dir, out, docs_per_shard=10, progress=False)
    reference = tokenize_documents([docs], tok_dir, out, docs_per_shard=10, progress=False)
    # its own (here finished) output: run again = resume, same manifest
    (out / "manifest.json").unlink()
    (out / "shard-00002.json").unlink()
    (out / ".shard-00002.bin.abc123.tmp").write_bytes(b"half")  # what a kill -9 mid-write leaves
    assert tokenize_documents([docs], tok_dir, out, docs_per_shard=10, progress=False) == reference
    assert not list(out.glob(".*.tmp"))
    # a foreign non-empty directory is refused, without and with a CLI
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a partial `data tokenize` output"):
        tokenize_documents([docs], tok_dir, other, docs_per_shard=10, progress=False)
    argv = ["data", "tokenize", str(docs), "--tokenizer", str(tok_dir), "--docs-per-shard", "10"]
    assert cli([*argv, "--out", str(a)]) == 2  # a prepared directory is not a token directory
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert (other / "notes.txt").read_text() == "mine"
    assert cli([*argv, "--out", str(other), "--overwrite"]) == 0
    assert not (other / "notes.txt").exists()
    assert json.loads((other / "manifest.json").read_text())["shards"] == reference["shards"]
    # other settings into an existing token directory: refused, --overwrite starts over
    with pytest.raises(DataError, match="different"):
        tokenize_documents([docs], tok_dir, out, docs_per_shard=15, progress=False)
    again = tokenize_documents([docs], tok_dir, out, docs_per_shard=15, progress=False, overwrite=True)
    assert len(again["shards"]) == 2 and sorted(p.name for p in out.glob("shard-*.json")) == [
        "shard-00000.json", "shard-00001.json"]


def test_readers_check_prepared_directories(tmp_path, dirs):
    a, b = dirs
    assert len(load_conversations(a)) == 6
    # a directory whose files do not match its report (a second writer, a crash mid-swap)
    with open(a / "conversations.jsonl", "a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match="report.json says 6") as err:
        load_conversations(a)
    assert str(a / "conversations.jsonl") in str(err.value)
    with pytest.raises(DataError, match="report.json says 6"):
        mix([f"{a}:1"], tmp_path / "m")
    with pytest.raises(DataError, match="report.json says 6"):
        dedup([a], tmp_path / "d")
    (b / "report.json").write_text('{"written": 6,\n  "written_by_kind": oops}')
    with pytest.raises(DataError, match=r"report.json:2:\d+: malformed JSON"):
        load_conversations(b)


@pytest.mark.parametrize("text, loc", [('{"name": "alpaca",\n "x": }', ":2:7"), ('["alpaca"]', ":1:1"),
                                       ('{"nam": "alpaca"}', ":1:1"), ("", ":1:1")])
def test_malformed_prompt_style_is_a_located_error(tmp_path, text, loc):
    (tmp_path / "prompt_style.json").write_text(text)
    with pytest.raises(DataError) as err:
        prepared_style(tmp_path)
    assert f"prompt_style.json{loc}" in str(err.value) and "hint" in str(err.value)


def test_a_synth_run_directory_is_not_a_prepared_one(tmp_path):
    """synth writes conversations.jsonl next to its own run report (counts per filter): readers take it."""
    run = tmp_path / "synth"
    run.mkdir()
    messages = [{"role": "user", "content": "say hello to everyone here"},
                {"role": "assistant", "content": "hello all of you"}]
    (run / "conversations.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    (run / "report.json").write_text(json.dumps({"run": {"stage": "self-instruct"}, "status": "done",
                                                 "counts": {"kept": 1}}))
    assert len(load_conversations(run)) == 1
    assert dedup([run], tmp_path / "d")["written"] == 1
