"""`convert from-hf` on a folder without tokenizer.json says so at conversion (stderr and run card),
not at the first generate."""
from __future__ import annotations

import json

import pytest

from openseason.cli import main
from openseason.convert import convert_from_hf


def test_missing_tokenizer_is_reported_at_conversion(make_neox, tmp_path, capsys):
    _model, hf_dir = make_neox("bare")
    out = tmp_path / "ckpt"
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {out}"
    assert f"openseason: warning: {hf_dir} has no tokenizer.json (it has no tokenizer files at all)" in captured.err
    card = json.loads((out / "run_card.json").read_text())
    assert len(card["warnings"]) == 1 and "save_pretrained" in card["warnings"][0]
    assert main(["generate", str(out), "--prompt", "hi", "--device", "cpu"]) == 2   # what the warning foretold
    assert "no tokenizer.json" in capsys.readouterr().err


def test_the_warning_names_the_tokenizer_files_it_cannot_read(make_neox, tmp_path):
    _model, hf_dir = make_neox("slow")
    (hf_dir / "vocab.json").write_text("{}")
    (hf_dir / "merges.txt").write_text("#version: 0.2\n")
    with pytest.warns(UserWarning, match="it has vocab.json, merges.txt, which openseason does not read"):
        convert_from_hf(hf_dir, tmp_path / "ckpt")


def test_no_warning_with_a_tokenizer(make_neox, tmp_path, tiny_tokenizer, capsys):
    _model, hf_dir = make_neox("full", tokenizer=tiny_tokenizer, vocab_size=512)
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "ckpt" / "run_card.json").read_text())["warnings"] == []
