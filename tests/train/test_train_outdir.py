"""One writer per run directory: the lock, refusing an earlier run, --overwrite (crash-safe) and
--resume, for finetune and pretrain (one process and under torchrun)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openseason.cli import main
from openseason.errors import ConfigError, OpenseasonError
from openseason.train.finetune import finetune
from openseason.train.outdir import TRASH
from openseason.train.pretrain import pretrain

from .helpers_train import make_base, make_prepared

FAST = dict(method="lora", micro_batch_size=4, seed=1, progress=False, register=False)


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    return make_base(tmp_path / "base", tiny_tokenizer), make_prepared(tmp_path / "data", n=24)


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("step-"))


def _metric_steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def test_second_writer_is_refused_and_the_first_is_unaffected(tmp_path, setup):
    base, data = setup
    run = tmp_path / "run"
    refused = []

    def second_writer(step, row):
        if step == 2:
            with pytest.raises(OpenseasonError) as err:
                finetune(base, data, out=run, max_steps=2, resume="auto", **FAST)
            refused.append(str(err.value))

    result = finetune(base, data, out=run, max_steps=4, save_every=2, callbacks=[second_writer], **FAST)
    assert refused and f"another process (PID {os.getpid()})" in refused[0] and str(run) in refused[0]
    assert result["steps"] == 4 and (run / "final").is_dir()
    assert _metric_steps(run) == [1, 2, 3, 4]
    assert _steps(run) == ["step-000002", "step-000004"]


def test_non_empty_run_dir_is_refused_by_the_cli(tmp_path, setup, capsys):
    base, data = setup
    run = tmp_path / "run"
    argv = ["finetune", str(base), "--data", str(data), "--out", str(run), "--max-steps", "2",
            "--micro-batch-size", "4", "--lora-rank", "2"]
    assert main(argv) == 0
    before = (run / "final" / "peft_weights.safetensors").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "run directory is not empty" in err and "--resume auto" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert (run / "final" / "peft_weights.safetensors").read_bytes() == before
    # --resume and --overwrite together make no sense
    assert main([*argv, "--resume", "auto", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_overwrite_leaves_nothing_for_resume_auto(tmp_path, setup):
    base, data = setup
    run = tmp_path / "run"
    finetune(base, data, out=run, max_steps=4, save_every=1, **FAST)
    assert _steps(run) == ["step-000001", "step-000002", "step-000003", "step-000004"]
    (run / "notes.txt").write_text("mine")
    result = finetune(base, data, out=run, max_steps=2, overwrite=True, **FAST)
    assert result["steps"] == 2 and _steps(run) == [] and not (run / "notes.txt").exists()
    assert _metric_steps(run) == [1, 2]
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "final", "loss.png", "metrics.csv", "preflight.json", "tensorboard"]
    # a later --resume auto finds no step directory of the old run: it goes on from the new run's final
    again = finetune(base, data, out=run, max_steps=3, resume="auto", allow_changes=True, **FAST)
    assert again["steps"] == 3 and _metric_steps(run) == [1, 2, 3]
    with pytest.raises(ConfigError, match="contradict"):
        finetune(base, data, out=run, max_steps=1, resume="auto", overwrite=True, **FAST)


def test_overwrite_killed_half_way_is_finished_by_the_next_run(tmp_path, setup, capsys):
    base, data = setup
    run = tmp_path / "run"
    finetune(base, data, out=run, max_steps=3, save_every=1, **FAST)
    # what a kill -9 in the middle of clearing leaves: the trash exists, some old entries still in place
    (run / TRASH).mkdir()
    os.replace(run / "final", run / TRASH / "final")
    os.replace(run / "step-000003", run / TRASH / "step-000003")
    assert _steps(run) == ["step-000001", "step-000002"]
    result = finetune(base, data, out=run, max_steps=2, resume="auto", **FAST)
    assert "finishing an interrupted --overwrite" in capsys.readouterr().err
    assert result["steps"] == 2 and _metric_steps(run) == [1, 2]  # not resumed from the old step-000002
    assert _steps(run) == [] and not (run / TRASH).exists()


# -- pretrain ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from openseason.data.tokenize import tokenize_documents
    from openseason.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("outdir-tokens")
    train_bpe([f"the quick brown fox {i}. " for i in range(100)], vocab_size=300).save(root / "tok")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"doc {i}: the quick brown fox {i % 7}."}) + "\n" for i in range(80)))
    tokenize_documents([docs], root / "tok", root / "tokens", docs_per_shard=40, progress=False)
    return root / "tokens"


PRE = dict(seq_len=16, micro_batch_size=2, progress=False, register=False)


def test_pretrain_refuses_non_empty_and_overwrites(tmp_path, tokens):
    run = tmp_path / "run"
    pretrain("tiny-neox", tokens, run, max_steps=3, save_every=1, **PRE)
    with pytest.raises(OpenseasonError, match="run directory is not empty"):
        pretrain("tiny-neox", tokens, run, max_steps=1, **PRE)
    result = pretrain("tiny-neox", tokens, run, max_steps=1, overwrite=True, **PRE)
    assert result["steps"] == 1 and _steps(run) == [] and _metric_steps(run) == [1]


def test_pretrain_refusal_under_torchrun_stops_every_rank(tmp_path, tokens):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("keep me")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "openseason",
           "pretrain", "--config", "tiny-neox", "--seq-len", "16", "--data", str(tokens), "--out", str(run),
           "--max-steps", "1", "--micro-batch-size", "1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "run directory is not empty" in result.stderr
    assert "rank 0 could not take the run directory" in result.stderr  # rank 1 stopped too, did not hang
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["old.txt"]


# -- recipes -------------------------------------------------------------------------------------------
def test_recipe_with_a_yaml_alias_is_refused_at_its_line(tmp_path):
    from openseason.train.options import FinetuneOptions
    from openseason.train.recipe import load_recipe

    recipe = tmp_path / "alias.yaml"
    recipe.write_text("method: lora\nlr: &peak 0.001\nmin_lr: *peak\n")
    with pytest.raises(ConfigError, match=r"alias.yaml:3:9: YAML aliases"):
        load_recipe(recipe, FinetuneOptions)
    recipe.write_text("method: lora\nlora_rank: [4\n")
    with pytest.raises(ConfigError, match=r"alias.yaml:\d+:\d+: malformed YAML"):
        load_recipe(recipe, FinetuneOptions)
    recipe.write_text("")
    assert load_recipe(recipe, FinetuneOptions) == {}
    recipe.write_text("method: lora\nlora-rank: 4\n")
    assert load_recipe(recipe, FinetuneOptions) == {"method": "lora", "lora_rank": 4}
