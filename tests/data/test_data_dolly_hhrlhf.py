"""`data prepare dolly-hhrlhf`: the MPT-7B-Instruct mix on the real Dolly and HH-RLHF samples."""
from __future__ import annotations

import gzip
import json

import pytest

from openseason.data.prepare import check_prepared, prepare
from openseason.data.sources.dolly_hhrlhf import FILTERS, filter_reason
from openseason.errors import OpenseasonError


@pytest.mark.parametrize("reply, reason", [
    ("What do you mean by that?", "hh_asks_question"),
    ("Sorry, that is not something to do.", "hh_apologizes"),
    ("We apologize for that.", "hh_apologizes"),
    ("Thanks for asking, it is blue.", "hh_thanks"),
    ("Humans need sleep.", "hh_mentions_human"),
    ("I think it is blue.", "hh_first_person"),
    ("That sounds fine to me.", "hh_first_person"),
    ("It’s blue, in my view.", "hh_first_person"),
    ("The sky is blue because of Rayleigh scattering.", None),
    ("Its imports include iron.", None),       # "i" inside words is not first person
])
def test_filter_reasons(reply, reason):
    assert filter_reason(reply) == reason


def test_mix_on_real_data(shared_data, tmp_path):
    dolly = shared_data / "dolly-15k" / "dolly_sample.jsonl"
    hh = shared_data / "hh-rlhf" / "harmless-base_test.jsonl.gz"
    report = prepare("dolly-hhrlhf", [dolly, hh], tmp_path / "out", progress=False)
    assert check_prepared(tmp_path / "out") == report

    n_dolly = sum(1 for _ in open(dolly))
    with gzip.open(hh, "rt") as f:
        n_hh = sum(1 for _ in f)
    assert report["read"] == n_dolly + n_hh
    by_source = report["written_by_source"]
    rejected = report["rejected"]
    assert by_source["dolly"] == n_dolly - sum(v for k, v in rejected.items() if not k.startswith("hh_"))
    hh_dropped = sum(v for k, v in rejected.items() if k.startswith("hh_"))
    assert by_source["hh-rlhf"] + hh_dropped == n_hh
    assert report["written"] == by_source["dolly"] + by_source["hh-rlhf"]
    # every filter fires on harmless-base, and most of it goes (red-team replies refuse, ask, apologize)
    assert {name for name, _ in FILTERS} <= set(rejected)
    assert 0 < by_source["hh-rlhf"] < n_hh / 2
    assert report["style"] == "dolly"

    rows = [json.loads(line) for line in open(tmp_path / "out" / "conversations.jsonl")]
    kept_hh = [r for r in rows if r["meta"]["mix"] == "hh-rlhf"]
    assert len(kept_hh) == by_source["hh-rlhf"]
    for row in kept_hh:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert filter_reason(row["messages"][1]["content"]) is None
    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl")]
    assert sum(r["reason"].startswith("hh_") for r in rejects) == hh_dropped
    assert all(r["where"].startswith(str(hh)) for r in rejects if r["reason"].startswith("hh_"))


def test_needs_two_files_in_order(shared_data, tmp_path):
    dolly = shared_data / "dolly-15k" / "dolly_sample.jsonl"
    hh = shared_data / "hh-rlhf" / "harmless-base_test.jsonl.gz"
    with pytest.raises(OpenseasonError, match="exactly two"):
        prepare("dolly-hhrlhf", [dolly], tmp_path / "a", progress=False)
    with pytest.raises(OpenseasonError, match="Dolly first|looks like Dolly|bad_field"):
        prepare("dolly-hhrlhf", [hh, dolly], tmp_path / "b", progress=False)


def test_cli(shared_data, tmp_path, capsys):
    from openseason.cli import main

    dolly = shared_data / "dolly-15k" / "dolly_sample.jsonl"
    hh = shared_data / "hh-rlhf" / "harmless-base_test.jsonl.gz"
    assert main(["data", "prepare", "dolly-hhrlhf", str(dolly), str(hh), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["source"] == "dolly-hhrlhf"
