"""A reduced quickstart run: report structure, files, and the built-in task suite."""
from __future__ import annotations

import json

from openseason.data.tasks import FAMILIES, generate, split_heldout
from openseason.train.quickstart import quickstart


def test_task_suite_answers_are_right():
    rows = generate(list(FAMILIES), 20, seed=1)
    assert len(rows) == 20 * len(FAMILIES)
    for row in rows:
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        family = row["meta"]["family"]
        if family == "reverse":
            assert a == q.split(": ")[1][::-1]
        elif family == "convert":
            n, unit = int(q.split(": ")[1]), q.split()[1]
            assert int(a) == n * {"km": 1000, "m": 100, "cm": 10, "kg": 1000, "L": 1000, "dm": 10}[unit]
        elif family == "add":
            nums = [int(t.strip(".")) for t in q.split() if t.strip(".").isdigit()]
            assert int(a) == sum(nums)
    train, held = split_heldout("convert", 100, 30)
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held}


def test_reduced_quickstart_writes_report(tmp_path):
    report = quickstart(tmp_path / "qs", pretrain_steps=6, finetune_steps=4, eval_items=8, pretrain_items=60,
                        progress=False)
    out = tmp_path / "qs"
    data = json.loads((out / "report.json").read_text())
    for key in ("before", "after"):
        assert 0.0 <= data[key]["exact_match"] <= 1.0 and data[key]["n"] == 8
    assert data["heldout_family"] == "convert" and data["finetune"]["method"] == "adapter-v2"
    assert (out / "report.md").read_text().startswith("# openseason quickstart")
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert (out / "finetune" / "final" / "peft.json").exists()
    assert report["finetune"]["trainable_parameters"] < report["finetune"]["total_parameters"] / 5
