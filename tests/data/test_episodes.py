"""Few-shot episodes from the synthetic image suite: deterministic, images from the split only, the CLI."""
from __future__ import annotations

import json

import pytest

from openseason.data.episodes import make_episodes, suite_items
from openseason.data.image_tasks import write_suite
from openseason.errors import DataError


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    write_suite(root, n=10, n_eval=4, size=32, families=["shape"])
    return root


def test_items_and_episodes(suite):
    items = suite_items(suite / "train", ["shape", "color"])
    assert len(items) == 10 and all(set(labels) == {"shape", "color"} for _, labels in items)
    rows = make_episodes(items, 20, shots=(0, 2), seed=5)
    assert rows == make_episodes(items, 20, shots=(0, 2), seed=5)           # deterministic
    for row in rows:
        k, task = row["meta"]["shots"], row["meta"]["task"]
        images = [p["path"] for m in row["messages"] if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image"]
        assert len(images) == k + 1 and len(set(images)) == k + 1          # the query is not among its shots
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        by_path = dict(items)
        assert answers == [by_path[p][task] for p in images]               # every shot answers the same task
    assert {r["meta"]["task"] for r in rows} == {"shape", "color"}
    with pytest.raises(DataError, match="labelled with digit"):
        suite_items(suite / "train", ["digit"])


def test_cli(suite, tmp_path, capsys):
    from openseason.cli import main

    assert main(["data", "episodes", str(suite / "eval"), "--out", str(tmp_path / "ep"), "--task", "shape",
                 "--n", "6", "--shots", "1,2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ep" / "conversations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and (tmp_path / "ep" / rows[0]["messages"][0]["content"][0]["path"]).exists()
    assert json.loads((tmp_path / "ep" / "prompt_style.json").read_text())["name"] == "flamingo"
    assert main(["data", "episodes", str(suite / "eval"), "--out", str(tmp_path / "x"), "--task", "shape",
                 "--shots", "two"]) == 2
    assert "--shots must be" in capsys.readouterr().err
