"""Records of a JSON array keep their identity: one id and one position per element, even when the
whole array is on one line, and the same ids whatever the file's layout (so dedup and mix name them)."""
from __future__ import annotations

import json

from openseason.data.dedup import dedup
from openseason.data.prepare import prepare

ROWS = [{"instruction": "Add 2 and 3", "input": "", "output": "5"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "", "input": "", "output": "nothing asked"},
        {"instruction": "Add 2 and 3", "input": "", "output": "5"}]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _prepare(tmp_path, name, text):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "c.json").write_text(text)
    return prepare("alpaca", [folder / "c.json"], folder / "out", progress=False), folder


def test_one_line_array_gets_an_id_and_a_position_per_element(tmp_path):
    report, folder = _prepare(tmp_path, "compact", json.dumps(ROWS))
    assert "\n" not in (folder / "c.json").read_text()
    ids = [c["id"] for c in _read(folder / "out" / "conversations.jsonl")]
    assert ids == ["alpaca-c#0", "alpaca-c#1", "alpaca-c#3"]
    [reject] = _read(folder / "out" / "rejects.jsonl")
    assert reject == {"where": f"{folder / 'c.json'}:1[#2]", "reason": "empty_instruction"}
    assert ROWS[2]["output"] == "nothing asked"  # [#2] is the element jq '.[2]' shows


def test_ids_do_not_depend_on_the_layout_and_positions_find_the_line(tmp_path):
    _prepare(tmp_path, "compact", json.dumps(ROWS))
    _report, pretty = _prepare(tmp_path, "pretty", json.dumps(ROWS, indent=4))
    compact_ids = [c["id"] for c in _read(tmp_path / "compact" / "out" / "conversations.jsonl")]
    assert [c["id"] for c in _read(pretty / "out" / "conversations.jsonl")] == compact_ids
    [reject] = _read(pretty / "out" / "rejects.jsonl")
    line = int(reject["where"].rsplit(":", 1)[1].split("[")[0])
    assert reject["where"].endswith("[#2]")
    assert (pretty / "c.json").read_text().splitlines()[line - 1].strip() == "{"      # the element starts here
    assert '"instruction": ""' in (pretty / "c.json").read_text().splitlines()[line]


def test_dedup_names_the_duplicate_elements_of_a_one_line_array(tmp_path):
    _report, folder = _prepare(tmp_path, "compact", json.dumps(ROWS))
    report = dedup([folder / "out"], tmp_path / "dedup", near=False)
    assert report["written"] == 2
    [reject] = _read(tmp_path / "dedup" / "rejects.jsonl")
    assert (reject["id"], reject["duplicate_of"]) == ("alpaca-c#3", "alpaca-c#0")
