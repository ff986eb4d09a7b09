"""Full checkpoints: round trip, sharding above a size, run cards, and clear errors for broken ones."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.checkpoint import (INDEX_NAME, WEIGHTS_NAME, load_config, load_model, read_run_card,
                                   save_checkpoint, update_run_card)
from openseason.errors import CheckpointError

from .helpers_checkpoint import same_weights, tiny_model


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_round_trip_gives_the_same_model(tmp_path, tiny_tokenizer, name):
    model = tiny_model(3, name)
    out = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tiny_tokenizer, run_card={"prompt_style": "plain"})
    loaded = load_model(out)
    assert same_weights(model, loaded)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert load_config(out).to_dict() == model.config.to_dict()
    assert (out / "tokenizer.json").exists() and not any(p.suffix in (".bin", ".pt") for p in out.iterdir())
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed.weight


def test_dtype_cast_on_load(tmp_path, model):
    loaded = load_model(save_checkpoint(tmp_path / "c", model), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_shards_above_the_size_limit(tmp_path, model):
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    out = save_checkpoint(tmp_path / "c", model, max_shard_bytes=total // 4)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 4 and not (out / WEIGHTS_NAME).exists()
    assert sorted(set(index["weight_map"].values())) == shards
    assert same_weights(model, load_model(out))


def test_missing_shard_is_named(tmp_path, model):
    out = save_checkpoint(tmp_path / "c", model, max_shard_bytes=100_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(out)


def test_truncated_weights_are_named(tmp_path, model):
    out = save_checkpoint(tmp_path / "c", model)
    data = (out / WEIGHTS_NAME).read_bytes()
    (out / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_model(out)
    assert info.value.where == str(out / WEIGHTS_NAME)


def test_weights_for_another_model_are_refused(tmp_path, model):
    out = save_checkpoint(tmp_path / "c", model)
    cfg = json.loads((out / "config.json").read_text())
    cfg["n_embd"], cfg["n_head"] = 128, 4
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(out)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")


def test_run_card_records_update_and_errors(tmp_path, model):
    out = save_checkpoint(tmp_path / "c", model, run_card={"prompt_style": "alpaca", "lineage": {"data": ["d"]}})
    card = read_run_card(out)
    assert card["kind"] == "full" and card["prompt_style"] == "alpaca" and card["created"]
    update_run_card(out, evaluations={"ppl": 3.5})
    card2 = read_run_card(out)
    assert card2["evaluations"] == {"ppl": 3.5} and card2["lineage"] == {"data": ["d"]}
    assert read_run_card(tmp_path) == {}
    (out / "run_card.json").write_text('{"a": 1,\n  oops}')
    with pytest.raises(CheckpointError) as info:
        read_run_card(out)
    assert info.value.where.startswith(f"{out / 'run_card.json'}:2:")
