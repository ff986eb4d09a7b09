"""PEFT checkpoints: trainable weights + a base reference; chains followed, cycles refused."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from openseason.checkpoint import (PEFT_CONFIG_NAME, base_chain, load_model, root_base, save_checkpoint,
                                   save_train_checkpoint)
from openseason.errors import CheckpointError
from openseason.peft import apply

from .helpers_checkpoint import tiny_model


@pytest.fixture
def adapter(tmp_path):
    """base (full) and A (LoRA + adapter-v2 on base, with non-zero trained weights); returns (base, A, model)."""
    base = save_checkpoint(tmp_path / "base", tiny_model(1))
    model = load_model(base)
    apply(model, "lora", rank=4, alpha=8, targets="q,v")
    apply(model, "adapter-v2", prompt_length=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    a = save_train_checkpoint(tmp_path / "A", model, None, {"step": 1}, base_checkpoint=base)
    return base, a, model.eval()


def test_adapter_round_trip(adapter):
    base, a, model = adapter
    assert not (a / "model.safetensors").exists()
    cfg = json.loads((a / PEFT_CONFIG_NAME).read_text())
    assert [m["method"] for m in cfg["methods"]] == ["lora", "adapter-v2"] and cfg["base_checkpoint"] == "../base"
    loaded = load_model(a)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids), model(ids), atol=1e-6)
        assert not torch.allclose(load_model(base)(ids), model(ids), atol=1e-3)   # the adapter matters
    assert root_base(a) == base.resolve()


def test_base_moves_with_the_run_tree(adapter, tmp_path):
    base, a, model = adapter
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(base), moved / "base")
    shutil.move(str(a), moved / "A")
    assert base_chain(moved / "A") == [(moved / "A").resolve(), (moved / "base").resolve()]


def test_chain_of_references_is_followed(adapter, tmp_path):
    base, a, model = adapter
    b = tmp_path / "B"
    shutil.copytree(a, b)
    (b / PEFT_CONFIG_NAME).write_text(json.dumps({"base_checkpoint": "../A", "methods": []}))
    assert base_chain(b) == [b.resolve(), a.resolve(), base.resolve()]
    ids = torch.tensor([[2, 7, 1, 8]])
    with torch.no_grad():
        assert torch.allclose(load_model(b)(ids), model(ids), atol=1e-6)


def test_self_reference_is_a_clear_error(adapter):
    _, a, _ = adapter
    (a / PEFT_CONFIG_NAME).write_text(json.dumps({"base_checkpoint": ".", "methods": []}))
    with pytest.raises(CheckpointError, match="cycle") as info:
        load_model(a)
    assert f"{a.resolve()} -> {a.resolve()}" in str(info.value)


def test_cycle_through_a_chain_names_every_link(adapter, tmp_path):
    base, a, _ = adapter
    b = tmp_path / "B"
    shutil.copytree(a, b)
    (b / PEFT_CONFIG_NAME).write_text(json.dumps({"base_checkpoint": "../A", "methods": []}))
    (a / PEFT_CONFIG_NAME).write_text(json.dumps({"base_checkpoint": "../B", "methods": []}))
    with pytest.raises(CheckpointError) as info:
        load_model(b)
    assert f"cycle: {b.resolve()} -> {a.resolve()} -> {b.resolve()}" in str(info.value)
    with pytest.raises(CheckpointError, match="cycle"):
        root_base(a)


def test_missing_base_is_a_clear_error(adapter):
    base, a, _ = adapter
    shutil.rmtree(base)
    with pytest.raises(CheckpointError, match="base checkpoint .* is missing") as info:
        load_model(a)
    assert info.value.where == str(a.resolve() / PEFT_CONFIG_NAME)


def test_an_adapter_cannot_be_saved_as_its_own_base(adapter):
    _, a, model = adapter
    with pytest.raises(CheckpointError, match="own base"):
        save_train_checkpoint(a, model, None, {"step": 2}, base_checkpoint=a)
