"""The convert verbs through `openseason.cli.main`: a full round trip and bad input as exit status 2."""
from __future__ import annotations

import json

import torch

from openseason.checkpoint import load_model
from openseason.cli import main


def test_cli_round_trip(make_neox, tiny_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    hf_model, hf_dir = make_neox(rotary_pct=1.0, tokenizer=tiny_tokenizer, vocab_size=512)
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", "from-hf", str(hf_dir), str(ours), "--name", "tiny-pythia"]) == 0
    assert main(["convert", "to-hf", str(ours), str(back), "--max-shard-size", "40K"]) == 0
    assert f"wrote {ours}" in capsys.readouterr().out
    assert json.loads((ours / "config.json").read_text())["name"] == "tiny-pythia"
    assert (back / "model.safetensors.index.json").exists()

    ids = torch.tensor([tiny_tokenizer.encode("The quick brown fox jumps")])
    with torch.no_grad():
        expected = hf_model(ids).logits
        torch.testing.assert_close(load_model(ours)(ids), expected, atol=1e-4, rtol=0)
        reloaded = AutoModelForCausalLM.from_pretrained(back).eval()
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-4, rtol=0)


def test_cli_bad_input_is_a_clear_message_exit_2(make_llama, tmp_path, capsys):
    _, hf_dir = make_llama()
    capsys.readouterr()  # transformers' own progress output while saving
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"openseason: error: {hf_dir / 'config.json'}: unsupported architecture FalconForCausalLM")
    assert "Traceback" not in err and not (tmp_path / "out").exists()

    assert main(["convert", "to-hf", str(tmp_path / "missing"), str(tmp_path / "hf")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
