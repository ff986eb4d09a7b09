"""Sources on the real samples in ../shared/data (counts from each folder's SOURCES.md)."""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import pytest

from openseason.cli import main as cli
from openseason.data.prepare import prepare
from openseason.data.sft import SFTData, prepared_style
from openseason.errors import DataError


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_dolly(shared_data, tmp_path):
    file = shared_data / "dolly-15k/dolly_sample.jsonl"
    report = prepare("dolly", [file], tmp_path / "d", progress=False)
    assert report["read"] == 577 and report["written"] == 577 and report["rejected"] == {}
    conv = rows(tmp_path / "d/conversations.jsonl")
    cats = Counter(c["meta"]["category"] for c in conv)
    assert len(cats) == 8 and cats["open_qa"] == 147 and cats["creative_writing"] == 25
    raw = rows(file)
    first = conv[0]
    assert first["messages"][0]["content"] == raw[0]["instruction"] + "\n\n" + raw[0]["context"]
    assert first["messages"][1] == {"role": "assistant", "content": raw[0]["response"]}
    assert set(first) == {"id", "source", "messages", "meta"} and first["source"] == "dolly"
    assert prepared_style(tmp_path / "d") == "dolly"
    # citation marks and the category filter
    report = prepare("dolly", [file], tmp_path / "c", categories=["summarization"], strip_citation_marks=True,
                     progress=False)
    assert report["written"] == 46 and report["rejected"] == {"category": 577 - 46}
    assert len(rows(tmp_path / "c/rejects.jsonl")) == 531
    text = "\n".join(c["messages"][0]["content"] for c in rows(tmp_path / "c/conversations.jsonl"))
    assert "[3]" not in text and "[4]" not in text


def test_oasst1_flat_rows(shared_data, tmp_path):
    file = shared_data / "oasst1/oasst1_validation_en_sample.jsonl"
    raw = rows(file)
    deleted = {r["message_id"] for r in raw if r["deleted"]}
    spam = {r["message_id"] for r in raw if r["review_result"] is False and not r["deleted"]}
    assert len(deleted) == 21
    report = prepare("oasst1", [file], tmp_path / "top1", mode="top1", progress=False)
    assert report["read"] == 872
    assert report["rejected"]["deleted"] == 21 and report["rejected"]["spam"] == len(spam)
    rejected_ids = {r["message_id"] for r in rows(tmp_path / "top1/rejects.jsonl")}
    assert deleted <= rejected_ids
    convs = rows(tmp_path / "top1/conversations.jsonl")
    trees = Counter(c["meta"]["tree_id"] for c in convs)
    assert len(convs) == len(trees) == 79 and max(trees.values()) == 1  # one thread per tree
    used = {m for c in convs for m in c["meta"]["message_ids"]}
    assert not used & (deleted | spam)
    by_id = {r["message_id"]: r for r in raw}
    for c in convs:  # top1 follows rank 0 wherever a rank exists
        for mid in c["meta"]["message_ids"][1:]:
            siblings = [r for r in raw if r["parent_id"] == by_id[mid]["parent_id"] and r["message_id"] not in deleted | spam]
            ranks = [r["rank"] for r in siblings if r["rank"] is not None]
            if ranks:
                assert by_id[mid]["rank"] == min(ranks)
        assert [m["role"] for m in c["messages"]][::2] == ["user"] * ((len(c["messages"]) + 1) // 2)
        assert c["messages"][-1]["role"] == "assistant"
    # all threads: at least as many, no tree in both splits
    report = prepare("oasst1", [file], tmp_path / "all", val_fraction=0.3, progress=False)
    convs = rows(tmp_path / "all/conversations.jsonl")
    assert len(convs) > 79 and len({tuple(c["meta"]["message_ids"]) for c in convs}) == len(convs)
    split_of = {}
    for c in convs:
        assert split_of.setdefault(c["meta"]["tree_id"], c["meta"]["split"]) == c["meta"]["split"]
    assert set(split_of.values()) == {"train", "validation"}
    # top-k with k=1 equals top1; preference pairs prefer the lower rank
    prepare("oasst1", [file], tmp_path / "k1", mode="top-k", top_k=1, progress=False)
    assert rows(tmp_path / "k1/conversations.jsonl") == rows(tmp_path / "top1/conversations.jsonl")
    prepare("oasst1", [file], tmp_path / "pref", mode="preferences", progress=False)
    prefs = rows(tmp_path / "pref/preferences.jsonl")
    assert prefs and all(p["meta"]["chosen_rank"] < p["meta"]["rejected_rank"] for p in prefs)
    assert all(p["prompt"][-1]["role"] == "user" for p in prefs)
    assert not (tmp_path / "pref/conversations.jsonl").exists()


def test_oasst2_trees_and_language_filter(shared_data, tmp_path):
    file = shared_data / "oasst1/oasst2_trees_sample.jsonl"
    report = prepare("oasst1", [file], tmp_path / "t", mode="top1", progress=False)
    assert report["trees_read"] == 25 and report["messages_read"] == 239
    assert report["rejected"]["deleted"] == 13
    convs = rows(tmp_path / "t/conversations.jsonl")
    assert len({c["meta"]["tree_id"] for c in convs}) == len(convs) <= 25
    report = prepare("oasst1", [file], tmp_path / "en", mode="top1", langs=["en"], progress=False)
    en = rows(tmp_path / "en/conversations.jsonl")
    assert en and all(c["meta"]["lang"] == "en" for c in en) and len(en) < len(convs)
    assert report["rejected"]["lang"] > 0


def test_hh_rlhf(shared_data, tmp_path):
    file = shared_data / "hh-rlhf/harmless-base_test.jsonl.gz"
    raw = [json.loads(line) for line in gzip.open(file, "rt")]
    report = prepare("hh-rlhf", [file], tmp_path / "h", progress=False)
    assert report["read"] == 2312
    convs = rows(tmp_path / "h/conversations.jsonl")
    prefs = rows(tmp_path / "h/preferences.jsonl")
    assert len(convs) + report["rejected"].get("empty_reply", 0) == 2312
    turns = Counter(c["meta"]["turns"] for c in convs)
    assert turns[1] >= 650  # SOURCES.md: 662 one-turn transcripts
    assert max(c["meta"]["turns"] for c in convs) >= 5  # full multi-turn conversations
    p = prefs[0]
    assert p["prompt"] == convs[0]["messages"][:-1] and p["chosen"] == convs[0]["messages"][-1]["content"]
    assert p["chosen"] != p["rejected"] and p["rejected"] in raw[0]["rejected"]
    # Alpaca Libre's conversion
    report = prepare("hh-rlhf", [file], tmp_path / "al", mode="alpaca-libre", progress=False)
    with_http = sum("http" in r["chosen"] for r in raw)
    assert with_http == 35 and report["rejected"]["contains_http"] == with_http
    convs = rows(tmp_path / "al/conversations.jsonl")
    assert report["written"] == len(convs) == 2312 - with_http - report["rejected"].get("empty", 0)
    assert all(len(c["messages"]) == 2 for c in convs)
    first = raw[0]["chosen"].split("\n\nHuman: ")[1].split("\n\nAssistant: ")
    assert convs[0]["messages"][0]["content"] == first[0].strip()
    assert convs[0]["messages"][1]["content"] == first[1].strip()
    assert not any("http" in m["content"] for c in convs for m in c["messages"])


def test_alpaca_json_array(shared_data, tmp_path, tiny_tokenizer):
    file = shared_data / "alpaca-format/alpaca_libre_ok_sample_2000.json"
    raw = json.load(open(file))
    report = prepare("alpaca", [file], tmp_path / "a", progress=False)
    empty = sum(not r["output"].strip() or r["output"].strip() == "<nooutput>" for r in raw)
    assert report["read"] == 2000 and report["written"] == 2000 - empty
    assert report["rejected"] == {"empty_output": empty}
    convs = rows(tmp_path / "a/conversations.jsonl")
    with_input = [c for c in convs if c["meta"]["input"]]
    real_input = [r for r in raw if r["input"].strip() and r["input"].strip() != "<noinput>"
                  and r["output"].strip() and r["output"].strip() != "<nooutput>"]
    assert len(with_input) == len(real_input) and with_input[0]["meta"]["input"] == real_input[0]["input"]
    assert not any(c["meta"]["input"].strip() == "<noinput>" for c in convs)
    rej = rows(tmp_path / "a/rejects.jsonl")[0]
    line, index = re.fullmatch(r".*:(\d+)\[#(\d+)\]", rej["where"]).groups()
    assert '"instruction"' in open(file).read().splitlines()[int(line)]  # points at the element's block
    assert raw[int(index)]["output"].strip() in ("", "<nooutput>")   # and names the element itself
    assert convs[0]["id"] == "alpaca-alpaca_libre_ok_sample_2000#0"
    data = SFTData(with_input[:5], tiny_tokenizer, "alpaca", max_length=4096)
    assert len(data) == 5 and "### Input:\n" in tiny_tokenizer.decode(data[0]["input_ids"])


def test_alpaca_libre_malformed_lines(shared_data, tmp_path, capsys):
    file = shared_data / "alpaca-format/alpaca_libre_tasks_v2.jsonl"
    with pytest.raises(DataError) as err:
        prepare("alpaca", [file], tmp_path / "fail", progress=False)
    assert f"{file}:2279:" in str(err.value) and "malformed JSON" in str(err.value)
    assert not (tmp_path / "fail/report.json").exists()
    # the CLI prints one clear line and exits 2
    assert cli(["data", "prepare", "alpaca", str(file), "--out", str(tmp_path / "cli")]) == 2
    assert "alpaca_libre_tasks_v2.jsonl:2279" in capsys.readouterr().err
    report = prepare("alpaca", [file], tmp_path / "skip", on_error="skip", progress=False)
    assert report["read"] == 2294 and report["rejected"]["malformed_json"] == 14
    rejects = rows(tmp_path / "skip/rejects.jsonl")
    bad = [r for r in rejects if r["reason"] == "malformed_json"]
    assert len(bad) == 14 and bad[0]["where"] == f"{file}:2279"
    statuses = Counter(json.loads(l)["status"] for l in open(file) if _parses(l))
    assert report["written"] == statuses["ok"] - report["rejected"].get("empty_output", 0) - report["rejected"].get(
        "empty_instruction", 0)
    assert report["read"] == report["written"] + sum(report["rejected"].values())


def _parses(line):
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False
