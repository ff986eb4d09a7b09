"""Property-based: whatever bytes a data file holds, every source reader (and fileio.iter_jsonl)
returns records or raises a clear OpenseasonError: never another exception, never a hang."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openseason.data.sources import get_source
from openseason.data.sources.base import Context
from openseason.errors import OpenseasonError
from openseason.fileio import iter_jsonl, read_json_rows

SETTINGS = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

# Field names the readers look for, so generated rows reach past "missing field" into the real logic.
KEYS = ["instruction", "input", "output", "response", "context", "category", "text", "messages", "role",
        "content", "conversations", "from", "value", "chosen", "rejected", "message_id", "parent_id",
        "message_tree_id", "lang", "rank", "deleted", "review_result", "replies", "prompt", "status",
        "meta", "id", "synthetic", "labels", "source", "input_text", "output_text",
        "image", "images", "annotations", "caption", "image_id", "file_name"]
ROLES = ["user", "assistant", "prompter", "human", "gpt", "system", "bot", ""]

leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                 st.text(max_size=20), st.sampled_from(ROLES), st.sampled_from(["\n\nHuman: hi\n\nAssistant: yo", "ok", "<image>\nWhat?", "in.json"]))
values = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)), max_leaves=20)
rows = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


def _jsonl(items) -> bytes:
    return "\n".join(json.dumps(x) for x in items).encode()


contents = st.one_of(
    st.binary(max_size=300),                                               # anything at all
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(rows, max_size=6).map(_jsonl),                                # plausible JSONL rows
    st.lists(values, max_size=6).map(_jsonl),                              # rows that are not objects
    st.lists(rows, max_size=6).map(lambda r: json.dumps(r, indent=4).encode()),  # a JSON array
    rows.map(lambda r: json.dumps(r, indent=2).encode()),                  # one JSON object (COCO's shape)
    st.lists(st.lists(st.text(max_size=8), min_size=1, max_size=4), max_size=5).map(  # CSV-ish
        lambda r: "\n".join(",".join(c) for c in r).encode("utf-8", "surrogatepass")),
)

SOURCES = [("alpaca", "sft", ".jsonl", {}), ("alpaca", "sft", ".json", {}), ("dolly", "sft", ".jsonl", {}),
           ("longform", "sft", ".jsonl", {}), ("sharegpt", "sft", ".json", {}),
           ("hh-rlhf", None, ".jsonl", {}), ("hh-rlhf", "alpaca-libre", ".jsonl", {}),
           ("oasst1", "all-threads", ".jsonl", {}), ("oasst1", "preferences", ".jsonl", {}),
           ("oasst1", "top-k", ".jsonl", {"top_k": 1}),
           ("redpajama", "documents", ".jsonl", {"github_filters": True}),
           ("csv", "sft", ".csv", {}), ("jsonl", "sft", ".jsonl", {"columns": {"messages": "messages"}}),
           ("llava", "sft", ".json", {}), ("coco", "captions", ".json", {}), ("coco", "images", ".json", {})]


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _consume(records) -> None:
    for _where, record in records:
        record.validate(_where) if hasattr(record, "validate") else None


@pytest.mark.parametrize("name,mode,suffix,options", SOURCES, ids=[f"{s[0]}-{s[1]}{s[2]}" for s in SOURCES])
@SETTINGS
@given(data=contents, on_error=st.sampled_from(["fail", "skip"]))
def test_source_readers_give_records_or_clear_errors(workdir, name, mode, suffix, options, on_error, data):
    try:
        module = get_source(name)
    except OpenseasonError:
        pytest.skip(f"no source {name!r}")
    path = workdir / f"in{suffix}"
    path.write_bytes(data)
    try:
        _consume(module.read([str(path)], Context(on_error), mode=mode or module.MODES[0], **dict(options)))
    except OpenseasonError:
        pass


@SETTINGS
@given(data=contents)
def test_fileio_readers_give_rows_or_clear_errors(workdir, data):
    for suffix in (".jsonl", ".json"):
        path = workdir / f"rows{suffix}"
        path.write_bytes(data)
        for call in (lambda: list(iter_jsonl(path)), lambda: list(iter_jsonl(path, on_error="skip", errors=[])),
                     lambda: read_json_rows(path)):
            try:
                call()
            except OpenseasonError:
                pass
