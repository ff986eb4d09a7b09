"""Pretraining through the one loop: the Pythia recipe, exact resume, and 1 vs 2 processes (FSDP2 on gloo)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openseason.cli import main
from openseason.data.tokenize import tokenize_documents
from openseason.errors import DataError
from openseason.train.pretrain import flops_per_token, pretrain, pythia_checkpoint_steps
from openseason.config import Config

RUN = ["--config", "tiny-neox", "--seq-len", "32"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from openseason.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("pretrain")
    tok = train_bpe([f"The quick brown fox jumps over the lazy dog {i}. " for i in range(200)], vocab_size=300)
    tok.save(root / "tok")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog "
                                                f"{i % 13} times."}) + "\n" for i in range(300)))
    tokenize_documents([docs], root / "tok", root / "tokens", docs_per_shard=100, progress=False)
    return root / "tokens"


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(handle)}


def _weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "openseason", "pretrain", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_pythia_schedule_and_flops():
    assert pythia_checkpoint_steps(3000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    config = Config.from_name("pythia-70m")
    # 6 x (all weights but the input embedding) + 12 L H Q T
    n = 70_426_624 - 50304 * 512
    assert flops_per_token(config, 2048) == 6 * n + 12 * 6 * 8 * 64 * 2048


def test_pretrain_recipe_schedule_and_resume_are_exact(tmp_path, tokens):
    full = pretrain("tiny-neox", tokens, tmp_path / "full", seq_len=32, micro_batch_size=2, grad_accum=2,
                    max_steps=6, checkpoint_schedule="pythia", progress=False,
                    keep_optimizer=True)  # step-000002 is resumed below: it must keep its optimizer state
    steps = sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-000000", "step-000001", "step-000002", "step-000004"]
    card = json.loads((full["final"] / "run_card.json").read_text())
    assert card["recipe"]["weight_decay"] == 0.1 and card["recipe"]["betas"] == [0.9, 0.95]
    assert card["train_config"]["warmup_steps"] == 1 and card["train_config"]["min_lr"] == pytest.approx(3e-5)
    assert card["lineage"]["tokens_manifest"]["total_tokens"] > 0
    losses = _losses(tmp_path / "full")
    assert losses[6] < losses[1]
    # resume from step 2 in a fresh directory: the same weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "step-000002", resumed / "step-000002")
    pretrain("tiny-neox", tokens, resumed, seq_len=32, micro_batch_size=2, grad_accum=2, max_steps=6,
             resume="auto", progress=False)
    a, b = _weights(full["final"]), _weights(resumed / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint is an ordinary one
    from openseason import LLM

    assert isinstance(LLM.load(full["final"], device="cpu").generate("The quick", max_new_tokens=3), str)


def test_two_processes_equal_one_and_resume_across_process_counts(tmp_path, tokens):
    one = tmp_path / "one"
    assert main(["pretrain", *RUN, "--data", str(tokens), "--out", str(one), "--micro-batch-size", "4",
                 "--max-steps", "4"]) == 0
    two = tmp_path / "two"
    _torchrun(2, [*RUN, "--data", str(tokens), "--out", str(two), "--micro-batch-size", "2", "--max-steps", "4",
                  "--save-every", "2", "--keep-optimizer"], tmp_path)  # step-000002 is resumed below
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l2) == [1, 2, 3, 4]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5)
    a, b = _weights(one / "final"), _weights(two / "final")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # saved on 2 processes, resumed on 1
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(two / "step-000002", moved / "step-000002")
    assert main(["pretrain", *RUN, "--data", str(tokens), "--out", str(moved), "--micro-batch-size", "4",
                 "--max-steps", "4", "--resume", "auto"]) == 0
    c = _weights(moved / "final")
    assert max(float((b[k] - c[k]).abs().max()) for k in b) < 1e-5
    assert _losses(moved)[4] == pytest.approx(l2[4], abs=1e-5)


def test_bad_inputs(tmp_path, tokens):
    with pytest.raises(DataError, match="no manifest.json"):
        pretrain("tiny-neox", tmp_path, tmp_path / "o", max_steps=1, progress=False)
    with pytest.raises(DataError, match="embedding has"):
        pretrain("tiny-neox", tokens, tmp_path / "o", max_steps=1, progress=False,
                 overrides={"vocab_size": 64, "padded_vocab_size": 64})


def test_mpt_pretrains_alike_on_one_and_two_processes(tmp_path, tokens):
    """MPT (ALiBi, fused Wqkv, no biases) goes through pretraining and FSDP2 like GPT-NeoX and LLaMA."""
    run = ["--config", "tiny-mpt", "--seq-len", "32", "--data", str(tokens)]
    one = tmp_path / "one"
    assert main(["pretrain", *run, "--out", str(one), "--micro-batch-size", "4", "--max-steps", "3"]) == 0
    two = tmp_path / "two"
    _torchrun(2, [*run, "--out", str(two), "--micro-batch-size", "2", "--max-steps", "3"], tmp_path)
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3] and l1[3] < l1[1]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5)
    a, b = _weights(one / "final"), _weights(two / "final")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
