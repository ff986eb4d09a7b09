"""Checks before step 1 (bad options stop at once, exit 2, no traceback, no --out left behind) and the
run summary printed before step 1 and kept in OUT/preflight.json (finetune and pretrain)."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.cli import main
from openseason.train.finetune import finetune
from openseason.train.pretrain import pretrain

from .helpers_train import make_base, make_prepared
from .test_pretrain_run import tokens  # noqa: F401 (the module's token directory fixture)

CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")

# (extra flags, what the message must say); each run would otherwise be fine. Ranges of single options
# are checked by options.resolve (tests/test_cli_bad_inputs.py has more); these are the run's own checks.
FINETUNE_BAD = [
    (["--lr", "-1"], "--lr must be > 0, not -1"),
    (["--lr", "nan"], "--lr must be > 0, not nan"),
    (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1, not 0"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1, not 0"),
    (["--min-lr", "1", "--lr", "0.1"], "--min-lr 1 is above --lr 0.1"),
    (["--max-length", "4096"], "--max-length 4096 is longer than the model's context window (256 tokens)"),
    pytest.param(["--device", "cuda"], "torch sees no CUDA GPU", marks=CUDA),
    (["--allow-changes"], "--allow-changes applies only with --resume"),
]
PRETRAIN_BAD = [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--seq-len", "1000"], "--seq-len 1000 is longer than the model's context window (256 tokens)"),
    pytest.param(["--device", "cuda"], "torch sees no CUDA GPU", marks=CUDA),
    (["--min-lr", "0.5", "--lr", "0.1"], "--min-lr 0.5 is above --lr 0.1"),
    (["--allow-changes"], "--allow-changes applies only with --resume"),
]


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    return make_base(tmp_path / "base", tiny_tokenizer), make_prepared(tmp_path / "data", n=24)


def _refused(capsys, argv, message, out):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and err.startswith("openseason: error:")
    assert not out.exists(), "a refused run must leave no --out behind"


@pytest.mark.parametrize("flags,message", FINETUNE_BAD)
def test_finetune_bad_options_stop_before_anything(tmp_path, setup, capsys, flags, message):
    base, data = setup
    out = tmp_path / "runs" / "run"
    _refused(capsys, ["finetune", str(base), "--data", str(data), "--out", str(out), "--max-steps", "2", *flags],
             message, out)


@pytest.mark.parametrize("flags,message", PRETRAIN_BAD)
def test_pretrain_bad_options_stop_before_anything(tmp_path, tokens, capsys, flags, message):  # noqa: F811
    out = tmp_path / "runs" / "run"
    _refused(capsys, ["pretrain", "--config", "tiny-neox", "--data", str(tokens), "--out", str(out),
                      "--max-steps", "2", *flags], message, out)


def test_out_that_is_a_file_is_refused(tmp_path, setup, tokens, capsys):  # noqa: F811
    base, data = setup
    out = tmp_path / "taken"
    out.write_text("not a run")
    for argv in (["finetune", str(base), "--data", str(data), "--max-steps", "1"],
                 ["pretrain", "--config", "tiny-neox", "--data", str(tokens), "--max-steps", "1"]):
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "exists and is a file, not a directory" in err and "Traceback" not in err
        assert out.read_text() == "not a run"
        assert main([*argv, "--out", str(out / "below")]) == 2
        err = capsys.readouterr().err
        assert "Not a directory" in err and "Traceback" not in err and out.read_text() == "not a run"


def test_missing_data_is_refused_before_the_run_directory(tmp_path, setup, capsys):
    base, _ = setup
    out = tmp_path / "run"
    _refused(capsys, ["finetune", str(base), "--data", str(tmp_path / "nope"), "--out", str(out), "--max-steps", "1"],
             "no such prepared directory", out)


def test_finetune_summary_counts_rows_per_reason(tmp_path, setup, capsys):
    base, data = setup
    # two rows whose reply starts after max_length tokens (nothing left to learn: dropped), one cut short
    long_prompt = "word " * 80
    with open(data / "conversations.jsonl", "a") as handle:
        for i in range(2):
            handle.write(json.dumps({"id": f"long-{i}", "messages": [
                {"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]}) + "\n")
        handle.write(json.dumps({"id": "cut", "messages": [
            {"role": "user", "content": "add 1 and 2"}, {"role": "assistant", "content": "3 " * 60}]}) + "\n")
    result = finetune(base, data, "lora", tmp_path / "run", max_steps=3, micro_batch_size=4, grad_accum=2,
                      max_length=48, val_size=2, progress=False, register=False)
    printed = capsys.readouterr().err  # stdout stays the command's result
    summary = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert summary["data"] == {"read": 27, "kept": 25, "dropped": {"no_target_tokens": 2}, "truncated": 1,
                               "train": 23, "validation": 2}
    from openseason.checkpoint import load_model

    tuned = load_model(result["final"])
    assert summary["parameters"]["total"] == sum(p.numel() for p in tuned.parameters())
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]
    assert summary["batch"] == {"micro_batch_size": 4, "grad_accum": 2, "processes": 1, "effective": 8,
                                "unit": "examples"}
    assert summary["tokens_per_step"] == 8 * 48 and summary["max_steps"] == 3
    assert summary["epochs"] == pytest.approx(3 * 8 / 23, abs=1e-4)
    assert summary["method"] == "lora" and summary["objective"] == "sft"
    assert "27 rows read, 25 kept, 2 dropped (no_target_tokens 2), 1 cut to 48 tokens" in printed
    assert "23 train / 2 validation" in printed and "4 x 2 accumulation x 1 process(es) = 8 examples" in printed
    # printed before step 1, and the run card keeps it
    card = json.loads((result["final"] / "run_card.json").read_text())
    assert card["preflight"] == summary


def test_pretrain_summary_says_when_the_stream_wraps(tmp_path, tokens, capsys):  # noqa: F811
    from openseason.data.shards import PretrainLoader

    samples = PretrainLoader(tokens, 32, 8).num_samples
    steps_per_pass = samples // 8
    pretrain("tiny-neox", tokens, tmp_path / "short", seq_len=32, micro_batch_size=4, grad_accum=2, max_steps=2,
             progress=False, register=False)
    short = json.loads((tmp_path / "short" / "preflight.json").read_text())
    assert short["wraps"] is False and short["tokens_per_step"] == 8 * 32 and short["tokens_per_step_exact"]
    assert short["data"]["samples"] == samples and short["epochs"] == pytest.approx(2 * 8 / samples, abs=1e-4)
    assert "does not wrap" in capsys.readouterr().err
    pretrain("tiny-neox", tokens, tmp_path / "long", seq_len=32, micro_batch_size=4, grad_accum=2,
             max_steps=steps_per_pass + 1, progress=False, register=False)
    long = json.loads((tmp_path / "long" / "preflight.json").read_text())
    assert long["wraps"] is True and long["wraps_at_step"] == steps_per_pass + 1
    assert f"WRAPS: samples repeat from step {steps_per_pass + 1}" in capsys.readouterr().err
