"""A resume compares its settings with the checkpoint's: changes are refused by name unless
--allow-changes; a method change never goes through; a finished run says so instead of training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from openseason.cli import main
from openseason.train.finetune import finetune
from openseason.train.pretrain import pretrain

from .helpers_train import make_base, make_prepared
from .test_pretrain_run import tokens  # noqa: F401 (the module's token directory fixture)

FLAGS = ["--method", "lora", "--max-steps", "4", "--save-every", "2", "--micro-batch-size", "4", "--lr", "0.003",
         "--seed", "1"]


def _stop_at(step):
    def callback(s, row):
        if s == step:
            raise KeyboardInterrupt  # a crash after `step`: step-000002 is the newest checkpoint
    return callback


@pytest.fixture()
def stopped(tmp_path, tiny_tokenizer):
    """A LoRA run that died after step 3 of 4 (step-000002 on disk), and the CLI arguments that made it."""
    base, data = make_base(tmp_path / "base", tiny_tokenizer), make_prepared(tmp_path / "data", n=24)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, data, "lora", run, max_steps=4, save_every=2, micro_batch_size=4, lr=0.003, seed=1,
                 progress=False, register=False, callbacks=[_stop_at(3)])
    argv = ["finetune", str(base), "--data", str(data), "--out", str(run), "--resume", "auto"]
    return run, argv, data


def _stored(run: Path, name: str) -> dict:
    return json.loads((run / name / "trainer_state.json").read_text())["settings"]


def test_changed_lr_is_refused_naming_it(stopped, capsys):
    run, argv, _ = stopped
    metrics = (run / "metrics.csv").read_text()
    assert main([*argv, *FLAGS[:-4], "--lr", "0.001", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "resuming would change the run's settings" in err and "lr: 0.003 -> 0.001" in err
    assert "--allow-changes" in err and "Traceback" not in err
    assert "min_lr: 0.0003 -> 0.0001" in err  # the default end of the cosine follows lr
    assert (run / "metrics.csv").read_text() == metrics and not (run / "final").exists()


def test_each_difference_is_named(stopped, capsys):
    run, argv, data = stopped
    with open(data / "conversations.jsonl", "a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "add 1 and 1"},
                                              {"role": "assistant", "content": "2"}]}) + "\n")
    flags = [f if f != "4" else "8" for f in FLAGS]  # --max-steps 8 and --micro-batch-size 8
    assert main([*argv, *flags, "--max-length", "64", "--warmup-steps", "1"]) == 2
    err = capsys.readouterr().err
    for line in ("max_steps: 4 -> 8", "batch (examples or samples per optimizer step): 4 -> 8",
                 "max_length (tokens per example): 256 -> 64", "warmup_steps: 0 -> 1", "data fingerprint: "):
        assert line in err, err


def test_allow_changes_goes_on_with_the_new_settings(stopped, capsys):
    run, argv, _ = stopped
    assert main([*argv, *FLAGS[:-4], "--lr", "0.001", "--seed", "1", "--allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "resuming with changed settings (--allow-changes):" in err and "lr: 0.003 -> 0.001" in err
    assert _stored(run, "step-000004")["lr"] == 0.001
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]


def test_lora_run_resumed_as_full_is_refused_even_with_allow_changes(stopped, capsys):
    run, argv, _ = stopped
    for extra in ([], ["--allow-changes"]):
        assert main([*argv, *FLAGS[2:], "--method", "full", *extra]) == 2
        err = capsys.readouterr().err
        assert "cannot resume this lora checkpoint with a different method (method: 'lora' -> 'full')" in err
        assert "openseason merge" in err and "Traceback" not in err
    assert not (run / "final").exists()


def test_finished_run_says_nothing_to_do(stopped, capsys):
    run, argv, _ = stopped
    assert main([*argv, *FLAGS]) == 0
    first = capsys.readouterr().out
    final_state = (run / "final" / "trainer_state.json").read_text()
    loss = json.loads(final_state)["loss"]
    assert isinstance(loss, float) and f"final loss {loss:.4f}" in first
    assert main([*argv, *FLAGS]) == 0
    again = capsys.readouterr().out
    assert "nothing to do: the run is already at step 4" in again and "final loss None" not in again
    assert f"final loss {loss:.4f}" in again and "raise --max-steps and pass --allow-changes" in again
    assert (run / "final" / "trainer_state.json").read_text() == final_state  # nothing rewritten


def test_pretrain_changed_sequence_length_is_refused(tmp_path, tokens, capsys):  # noqa: F811
    run = tmp_path / "run"
    args = ["pretrain", "--config", "tiny-neox", "--data", str(tokens), "--out", str(run), "--max-steps", "2",
            "--micro-batch-size", "2"]
    pretrain("tiny-neox", tokens, run, seq_len=32, micro_batch_size=2, max_steps=1, progress=False, register=False)
    assert main([*args, "--seq-len", "16", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "seq_len (tokens per sample): 32 -> 16" in err and "max_steps: 1 -> 2" in err
    assert main([*args, "--seq-len", "32", "--resume", "auto", "--allow-changes"]) == 0
    assert "pretrained 2 steps" in capsys.readouterr().out
