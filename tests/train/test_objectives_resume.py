"""DPO after kill -9: resume with --resume auto and end with exactly the weights of an uninterrupted run
(the reference log-prob cache written before the kill is reused, not recomputed)."""
from __future__ import annotations


import pytest
import torch

from openseason.train.finetune import finetune

from .helpers_train import assert_same_weights, for_method, kill_finetune_after_checkpoint, make_base
from .test_objectives_run import make_pairs

ARGS = dict(objective="dpo", beta=0.1, max_steps=7, save_every=2, micro_batch_size=4, grad_accum=2, seed=3, lr=3e-3,
            warmup_steps=2, eval_every=3, val_size=4, lora_dropout=0.1, max_length=48)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_tokenizer, method):
    args = for_method(method, ARGS)
    base = make_base(tmp_path / "base", tiny_tokenizer)
    pairs = make_pairs(tmp_path / "pairs", n=40)
    reference = finetune(base, pairs, method, tmp_path / "ref", progress=False, register=False, **args)
    assert reference["report"]["reference_logps"].startswith("computed")

    run = kill_finetune_after_checkpoint(tmp_path, base, pairs, method, args)

    resumed = finetune(base, pairs, method, run, progress=False, register=False, resume="auto", **args)
    assert resumed["steps"] == 7 and resumed["report"]["reference_logps"] == "reused"
    got_w = assert_same_weights(reference["final"], resumed["final"])
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 8)]
    assert resumed["report"]["heldout_reward_acc"] == reference["report"]["heldout_reward_acc"]
    if method == "full":  # the run really moved away from the reference model
        from safetensors.torch import load_file

        base_w = load_file(str(base / "model.safetensors"))
        assert not torch.equal(base_w["blocks.0.attn.qkv.weight"], got_w["blocks.0.attn.qkv.weight"])
