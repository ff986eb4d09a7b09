"""Bad input: every problem is a CheckpointError naming the file, and no output directory is left behind."""
from __future__ import annotations

import json
import re

import pytest
import torch

from openseason.checkpoint import load_model
from openseason.convert import convert_from_hf, convert_to_hf
from openseason.errors import CheckpointError


def _no_output(out, parent):
    assert not out.exists(), "a failed conversion must not leave an output directory"
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging directory left behind"


def _fails(hf_dir, tmp_path, *patterns):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        convert_from_hf(hf_dir, out)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    _no_output(out, tmp_path)
    return message


def _edit_config(hf_dir, **changes):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def _edit_weights(hf_dir, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(hf_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


def test_unsupported_architecture(make_llama, tmp_path):
    _, hf_dir = make_llama()
    _edit_config(hf_dir, architectures=["MistralForCausalLM"], model_type="mistral")
    message = _fails(hf_dir, tmp_path, "MistralForCausalLM", "GPTNeoXForCausalLM", "LlamaForCausalLM",
                     re.escape(str(hf_dir / "config.json")))
    assert "unsupported architecture" in message


def test_missing_config(make_llama, tmp_path):
    _, hf_dir = make_llama()
    (hf_dir / "config.json").unlink()
    _fails(hf_dir, tmp_path, "config.json", re.escape(str(hf_dir)))


def test_malformed_config(make_llama, tmp_path):
    _, hf_dir = make_llama()
    (hf_dir / "config.json").write_text('{\n  "architectures": ["LlamaForCausalLM"],\n  "hidden_size": \n}')
    _fails(hf_dir, tmp_path, "malformed JSON", re.escape(str(hf_dir / "config.json")) + r":\d+:\d+")


def test_missing_directory(tmp_path):
    _fails(tmp_path / "nope", tmp_path, "not found", "nope")


def test_missing_weight_key(make_neox, tmp_path):
    _, hf_dir = make_neox()
    _edit_weights(hf_dir, lambda s: s.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.bias"))
    _fails(hf_dir, tmp_path, "missing weight keys", "gpt_neox.layers.1.mlp.dense_4h_to_h.bias",
           re.escape(str(hf_dir / "model.safetensors")))


def test_unexpected_weight_key(make_llama, tmp_path):
    _, hf_dir = make_llama()
    _edit_weights(hf_dir, lambda s: s.update({"model.layers.0.self_attn.extra_proj.weight": torch.zeros(2, 2)}))
    _fails(hf_dir, tmp_path, "unexpected weight keys", "extra_proj", "model.safetensors")


def test_more_layers_in_weights_than_config(make_llama, tmp_path):
    _, hf_dir = make_llama()
    _edit_config(hf_dir, num_hidden_layers=1)
    _fails(hf_dir, tmp_path, "unexpected weight keys", r"model\.layers\.1\.")


def test_shape_mismatch(make_llama, tmp_path):
    _, hf_dir = make_llama()
    _edit_config(hf_dir, intermediate_size=40)  # the weights were saved with 48
    _fails(hf_dir, tmp_path, "shape mismatch", "model.layers.0.mlp.gate_proj.weight", r"\(48, 32\)", r"\(40, 32\)",
           "model.safetensors")


def test_truncated_safetensors(make_neox, tmp_path):
    _, hf_dir = make_neox()
    data = (hf_dir / "model.safetensors").read_bytes()
    (hf_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    _fails(hf_dir, tmp_path, "corrupt or truncated", re.escape(str(hf_dir / "model.safetensors")))


def test_garbage_safetensors_shard(make_llama, tmp_path):
    _, hf_dir = make_llama(save_kwargs={"max_shard_size": "20KB"})
    shard = sorted(hf_dir.glob("model-*-of-*.safetensors"))[1]
    shard.write_bytes(b"\x00garbage" * 10)
    _fails(hf_dir, tmp_path, "corrupt or truncated", re.escape(str(shard)))


def test_index_names_missing_shard(make_llama, tmp_path):
    _, hf_dir = make_llama(save_kwargs={"max_shard_size": "20KB"})
    shard = sorted(hf_dir.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    _fails(hf_dir, tmp_path, "missing", shard.name, re.escape(str(hf_dir / "model.safetensors.index.json")))


def test_corrupt_bin(make_neox, bin_writer, tmp_path):
    _, hf_dir = make_neox()
    bin_writer(hf_dir)
    data = (hf_dir / "pytorch_model.bin").read_bytes()
    (hf_dir / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    message = _fails(hf_dir, tmp_path, "corrupt or truncated PyTorch weights file", re.escape(str(hf_dir / "pytorch_model.bin")))
    assert "Traceback" not in message


def test_bin_that_needs_code_is_refused(make_neox, bin_writer, tmp_path):
    _, hf_dir = make_neox()
    bin_writer(hf_dir)

    import argparse

    # Loading an arbitrary class instance means running pickle's code paths; weights_only refuses it.
    torch.save({"x": argparse.Namespace(payload=1)}, hf_dir / "pytorch_model.bin")
    _fails(hf_dir, tmp_path, "unsafe PyTorch weights file", "weights_only", re.escape(str(hf_dir / "pytorch_model.bin")))


def test_no_weights(make_llama, tmp_path):
    _, hf_dir = make_llama()
    (hf_dir / "model.safetensors").rename(hf_dir / "weights.pt")
    _fails(hf_dir, tmp_path, "no weights found", "weights.pt")


def test_rope_scaling_is_refused(make_llama, tmp_path):
    _, hf_dir = make_llama()
    _edit_config(hf_dir, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0})
    _fails(hf_dir, tmp_path, "llama3", "not supported", "config.json")


def test_failed_conversion_keeps_previous_checkpoint(make_llama, tmp_path):
    hf_model, hf_dir = make_llama()
    out = convert_from_hf(hf_dir, tmp_path / "out")
    before = (out / "model.safetensors").read_bytes()
    _edit_weights(hf_dir, lambda s: s.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        convert_from_hf(hf_dir, out)
    assert (out / "model.safetensors").read_bytes() == before
    load_model(out)


def test_to_hf_refuses_inexpressible_config(make_llama, tmp_path):
    _, hf_dir = make_llama()
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["parallel_residual"] = True
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="cannot express as LlamaForCausalLM.*parallel_residual"):
        convert_to_hf(ckpt, tmp_path / "back")
    _no_output(tmp_path / "back", tmp_path)


def test_to_hf_checks_weights(make_neox, tmp_path):
    _, hf_dir = make_neox()
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_layer"] = 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing weight keys.*blocks\.2\."):
        convert_to_hf(ckpt, tmp_path / "back")
    _no_output(tmp_path / "back", tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        convert_to_hf(tmp_path / "nope", tmp_path / "back")


def test_output_must_not_replace_input(make_llama, tmp_path):
    _, hf_dir = make_llama()
    before = sorted(p.name for p in hf_dir.iterdir())
    for out in (hf_dir, hf_dir.parent):
        with pytest.raises(CheckpointError, match="would delete the input"):
            convert_from_hf(hf_dir, out)
    assert sorted(p.name for p in hf_dir.iterdir()) == before
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    with pytest.raises(CheckpointError, match="would delete the input"):
        convert_to_hf(ckpt, ckpt)
    load_model(ckpt)


def test_unknown_dtype(make_llama, tmp_path):
    _, hf_dir = make_llama()
    with pytest.raises(CheckpointError, match="unknown dtype 'int4'"):
        convert_from_hf(hf_dir, tmp_path / "out", dtype="int4")
    _no_output(tmp_path / "out", tmp_path)
