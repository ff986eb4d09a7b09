"""Token shards and the deterministic pretraining loader."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openseason.data.shards import PretrainLoader, TokenStream, describe_step
from openseason.data.tokenize import checksums_ok, tokenize_documents
from openseason.errors import DataError


@pytest.fixture()
def corpus(tmp_path, tiny_tokenizer):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save(tok_dir)
    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as handle:
        for i in range(300):
            handle.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps {i % 7} times.",
                                     "meta": {"i": i}}) + "\n")
    return tok_dir, docs


def _shard_bytes(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*.bin"))}


def test_stream_is_documents_separated_by_eos(tmp_path, corpus, tiny_tokenizer):
    tok_dir, docs = corpus
    manifest = tokenize_documents([docs], tok_dir, tmp_path / "out", docs_per_shard=64, progress=False)
    assert manifest["documents"] == 300 and len(manifest["shards"]) == 5
    stream = TokenStream(tmp_path / "out")
    all_tokens = stream.read(0, len(stream)).tolist()
    expected = []
    for line in docs.read_text().splitlines():
        expected += tiny_tokenizer.encode(json.loads(line)["text"]) + [tiny_tokenizer.eos_id]
    assert all_tokens == expected
    assert manifest["total_tokens"] == len(expected)
    assert checksums_ok(tmp_path / "out") == []
    index = np.load(tmp_path / "out" / "shard-00001.idx.npy")
    assert index.size == 64 and index[0] == 0


def test_workers_and_shuffle_are_deterministic(tmp_path, corpus):
    tok_dir, docs = corpus
    tokenize_documents([docs], tok_dir, tmp_path / "a", docs_per_shard=50, shuffle_seed=3, progress=False)
    tokenize_documents([docs], tok_dir, tmp_path / "b", docs_per_shard=50, shuffle_seed=3, workers=2,
                       progress=False)
    tokenize_documents([docs], tok_dir, tmp_path / "c", docs_per_shard=50, progress=False)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert _shard_bytes(tmp_path / "a") != _shard_bytes(tmp_path / "c")


def test_resume_after_kill_is_byte_identical(tmp_path, corpus):
    tok_dir, docs = corpus
    reference = tmp_path / "ref"
    tokenize_documents([docs], tok_dir, reference, docs_per_shard=10, progress=False)
    out = tmp_path / "killed"
    code = (f"from openseason.data.tokenize import tokenize_documents as t; import time, openseason.data.tokenize as m\n"
            f"orig = m._write_shard\n"
            f"def slow(*a, **k):\n    orig(*a, **k); time.sleep(0.2)\n"
            f"m._write_shard = slow\n"
            f"t([{str(docs)!r}], {str(tok_dir)!r}, {str(out)!r}, docs_per_shard=10, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while len(list(out.glob("shard-*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("shard-*.json")))
    assert 3 <= done < 30 and not (out / "manifest.json").exists()
    tokenize_documents([docs], tok_dir, out, docs_per_shard=10, progress=False)
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert json.loads((out / "manifest.json").read_text())["shards"] == \
        json.loads((reference / "manifest.json").read_text())["shards"]


def test_changed_settings_refuse_to_resume(tmp_path, corpus):
    tok_dir, docs = corpus
    tokenize_documents([docs], tok_dir, tmp_path / "o", docs_per_shard=10, progress=False)
    with pytest.raises(DataError, match="different"):
        tokenize_documents([docs], tok_dir, tmp_path / "o", docs_per_shard=20, progress=False)


def test_loader_step_order_is_independent_of_process_count(tmp_path, corpus):
    tok_dir, docs = corpus
    tokenize_documents([docs], tok_dir, tmp_path / "o", docs_per_shard=40, progress=False)
    one = PretrainLoader(tmp_path / "o", seq_len=16, global_batch=8)
    stream = TokenStream(tmp_path / "o")
    for step in (0, 1, 7):
        whole = one.batch(step)
        parts = [PretrainLoader(tmp_path / "o", 16, 8, rank=r, world_size=4).batch(step) for r in range(4)]
        assert torch.equal(torch.cat([p["input_ids"] for p in parts]), whole["input_ids"])
        # sample j is tokens [16 j, 16 j + 17)
        j = step * 8 + 3
        expected = stream.read(16 * j, 17)
        assert whole["input_ids"][3].tolist() == expected[:-1].tolist()
        assert whole["targets"][3].tolist() == expected[1:].tolist()
    # after the last sample the stream wraps around to the first (the next epoch)
    assert one.sample(one.num_samples).tolist() == one.sample(0).tolist()
    rows = describe_step(tmp_path / "o", 2, 16, 8)
    assert [r["sample"] for r in rows] == list(range(16, 24))


def test_damaged_directory_is_reported(tmp_path, corpus):
    tok_dir, docs = corpus
    tokenize_documents([docs], tok_dir, tmp_path / "o", docs_per_shard=100, progress=False)
    with open(tmp_path / "o" / "shard-00001.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(DataError, match="shard-00001.bin"):
        TokenStream(tmp_path / "o")
    with pytest.raises(DataError, match="no manifest.json"):
        TokenStream(tmp_path)


@pytest.mark.parametrize("name,message", [
    ("../outside.bin", "outside the token directory"),
    ("sub/../../outside.bin", "outside the token directory"),
    ("/etc/passwd", "absolute path"),
    (None, "must be a file name"),
])
def test_manifest_cannot_name_files_outside_its_directory(tmp_path, corpus, name, message):
    tok_dir, docs = corpus
    out = tmp_path / "o"
    tokenize_documents([docs], tok_dir, out, docs_per_shard=100, progress=False)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((out / "shard-00000.bin").read_bytes())  # a file that would pass the size check
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message) as info:
        TokenStream(out)
    assert str(out / "manifest.json") in str(info.value)
    with pytest.raises(DataError, match=message):
        checksums_ok(out)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(dtype="object"), "dtype"),
    (lambda m: m.update(shards="x"), "shards"),
    (lambda m: m["shards"][0].update(tokens=-1), "tokens"),
    (lambda m: m.pop("eos_id"), "eos_id"),
])
def test_malformed_manifest_is_a_clear_error(tmp_path, corpus, edit, message):
    tok_dir, docs = corpus
    out = tmp_path / "o"
    tokenize_documents([docs], tok_dir, out, docs_per_shard=100, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        TokenStream(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json:1:2: malformed JSON"):
        TokenStream(out)
