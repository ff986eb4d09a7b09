"""Kill -9 in the middle of a run, resume with --resume auto, and end with exactly the same weights."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from openseason.train.finetune import finetune

from .helpers_train import assert_same_weights, for_method, kill_finetune_after_checkpoint, make_base, make_prepared

ARGS = dict(max_steps=7, save_every=2, micro_batch_size=4, grad_accum=2, seed=3, lr=3e-3, warmup_steps=2,
            eval_every=3, lora_dropout=0.1, adapter_prompt_length=3, adapter_layers=1)


@pytest.mark.parametrize("method", ["full", "lora", "adapter-v2"])
def test_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_tokenizer, method):
    base = make_base(tmp_path / "base", tiny_tokenizer)
    data = make_prepared(tmp_path / "data")
    args = for_method(method, ARGS)
    reference = finetune(base, data, method, tmp_path / "ref", progress=False, register=False, **args)

    run = kill_finetune_after_checkpoint(tmp_path, base, data, method, args)

    resumed = finetune(base, data, method, run, progress=False, register=False, resume="auto", **args)
    assert resumed["steps"] == 7
    got_w = assert_same_weights(reference["final"], resumed["final"])
    # metrics.csv has each step exactly once after the resume
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 8)]
    # and the run really moved away from its starting point
    base_w = load_file(str(base / "model.safetensors"))
    if method == "full":
        assert not torch.equal(base_w["blocks.0.attn.qkv.weight"], got_w["blocks.0.attn.qkv.weight"])
