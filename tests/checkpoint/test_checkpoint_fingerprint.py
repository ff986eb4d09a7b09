"""A PEFT checkpoint records its base's fingerprint and refuses another base of the same shape."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from openseason.checkpoint import PEFT_CONFIG_NAME, load_model, save_checkpoint, weights_fingerprint
from openseason.checkpoint.fingerprint import SMALL_TENSOR_BYTES
from openseason.errors import CheckpointError

from .helpers_checkpoint import tiny_model, trained_lora


def _lora_on(base, out):
    return trained_lora(base, out)[0]


def test_another_base_of_the_same_shape_is_refused(tmp_path):
    base = save_checkpoint(tmp_path / "base", tiny_model(1))
    other = save_checkpoint(tmp_path / "other", tiny_model(2))   # same config, other weights
    assert {k: v.shape for k, v in tiny_model(1).state_dict().items()} == \
           {k: v.shape for k, v in tiny_model(2).state_dict().items()}
    a = _lora_on(base, tmp_path / "A")
    cfg = json.loads((a / PEFT_CONFIG_NAME).read_text())
    assert cfg["base_fingerprint"] == weights_fingerprint(base) != weights_fingerprint(other)
    load_model(a)  # its own base: fine
    # the user points the adapter at another base
    cfg.update(base_checkpoint="../other", base_checkpoint_abs=str(other.resolve()))
    (a / PEFT_CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"A/peft.json: the base checkpoint .*other is not the one this PEFT "
                                              r"checkpoint was trained on"):
        load_model(a)


def test_base_replaced_in_place_is_refused_and_a_copy_is_accepted(tmp_path):
    base = save_checkpoint(tmp_path / "base", tiny_model(1))
    a = _lora_on(base, tmp_path / "A")
    b = tmp_path / "B"  # a level on top of A (as test_checkpoint_peft builds chains): checked level by level
    shutil.copytree(a, b)
    (b / PEFT_CONFIG_NAME).write_text(json.dumps({"base_checkpoint": "../A", "methods": [],
                                                  "base_fingerprint": weights_fingerprint(a)}))
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(base)
    load_model(b)
    shutil.rmtree(base)
    save_checkpoint(tmp_path / "base", tiny_model(3))  # same path, same shapes, other weights
    with pytest.raises(CheckpointError, match="A/peft.json: the base checkpoint"):
        load_model(b)
    with pytest.raises(CheckpointError, match="not the one this PEFT checkpoint was trained on"):
        load_model(a)


def test_checkpoints_written_before_fingerprints_still_load(tmp_path):
    base = save_checkpoint(tmp_path / "base", tiny_model(1))
    a = _lora_on(base, tmp_path / "A")
    cfg = json.loads((a / PEFT_CONFIG_NAME).read_text())
    del cfg["base_fingerprint"]
    (a / PEFT_CONFIG_NAME).write_text(json.dumps(cfg))
    load_model(a)


def _file_ckpt(directory, tensors):
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def test_fingerprint_sees_changes_in_small_and_large_tensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(256, 256, generator=gen)          # 256 KiB: sampled
    norm = torch.randn(64, generator=gen)               # 256 bytes: hashed whole
    assert big.numel() * 4 > SMALL_TENSOR_BYTES >= norm.numel() * 4
    ref = weights_fingerprint(_file_ckpt(tmp_path / "ref", {"w": big, "ln": norm}))
    assert weights_fingerprint(_file_ckpt(tmp_path / "same", {"w": big.clone(), "ln": norm.clone()})) == ref
    tuned = big + 1e-3 * torch.randn(256, 256, generator=gen)    # what finetuning does: every value moves
    assert weights_fingerprint(_file_ckpt(tmp_path / "tuned", {"w": tuned, "ln": norm})) != ref
    one = norm.clone()
    one[17] += 1e-3
    assert weights_fingerprint(_file_ckpt(tmp_path / "one", {"w": big, "ln": one})) != ref
    assert weights_fingerprint(_file_ckpt(tmp_path / "bf16", {"w": big.bfloat16(), "ln": norm})) != ref
