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


def _heldout_loss(checkpoint, tokenizer, records) -> float:
    """Mean cross-entropy of the reference answers (the tokens finetuning trains on) of `records`."""
    import torch
    import torch.nn.functional as F

    from openseason.checkpoint import load_model
    from openseason.data.sft import IGNORE, SFTData

    model = load_model(checkpoint)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in SFTData(records, tokenizer, "plain", model.config.block_size):
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor(ex["labels"])
            logits, targets = model(ids)[0, :-1].float(), labels[1:]
            keep = targets != IGNORE
            total += F.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def test_reduced_quickstart_improves_on_the_heldout_task(tmp_path):
    """A short run (~30 s on 2 cores): too short for exact match to move, so the improvement is
    measured as the loss of the held-out reference answers, before vs after finetuning."""
    import csv

    from openseason.tokenizer import Tokenizer

    report = quickstart(tmp_path / "qs", pretrain_steps=55, finetune_steps=40, eval_items=16, pretrain_items=400,
                        progress=False)
    out = tmp_path / "qs"
    data = json.loads((out / "report.json").read_text())
    assert data["heldout_family"] == "convert" and data["finetune"]["method"] == "adapter-v2"
    assert data["before"]["n"] == data["after"]["n"] == 16
    assert (out / "report.md").read_text().startswith("# openseason quickstart")
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert (out / "finetune" / "final" / "peft.json").exists()
    assert report["finetune"]["trainable_parameters"] < report["finetune"]["total_parameters"] / 5
    # the expectation is measured over pretraining steps 10-50, and the threads it ran on are reported
    timings = data["timings"]
    assert 0 < timings["expected_s"] and timings["total_s"] > timings["pretrain_s"] > 0
    assert set(data["threads"]) == {"governed", "final", "changes"} and data["threads"]["final"] >= 1

    with open(out / "finetune" / "metrics.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert losses[-1] < 0.6 * losses[0], losses

    _, heldout = split_heldout("convert", 600, 16, seed=0)      # the items the report evaluated
    tokenizer = Tokenizer.from_dir(data["base_checkpoint"])
    before = _heldout_loss(data["base_checkpoint"], tokenizer, heldout)
    after = _heldout_loss(data["finetuned_checkpoint"], tokenizer, heldout)
    assert after < 0.75 * before, (before, after)


def test_quickstart_options_and_a_non_empty_out(tmp_path, capsys):
    import pytest

    from openseason.cli import main
    from openseason.errors import ConfigError, OpenseasonError

    with pytest.raises(ConfigError, match="unknown quickstart options"):
        quickstart(tmp_path / "a", pretrain_stepz=1)
    out = tmp_path / "qs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OpenseasonError, match="run directory is not empty"):
        quickstart(out, pretrain_steps=1, finetune_steps=1, progress=False)
    assert main(["quickstart", "--out", str(out), "--pretrain-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "mine"
