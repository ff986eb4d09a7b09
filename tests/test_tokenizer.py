"""Tokenizer: explicit BOS/EOS policy, save/load round trip, clear errors."""
from __future__ import annotations

import json

import pytest

from openseason.config import Config
from openseason.errors import CheckpointError
from openseason.tokenizer import Tokenizer, copy_tokenizer_files, train_bpe

TEXTS = ["hello world, hello tokenizer", "the quick brown fox", "<s> and </s> are special"] * 10


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=300, special_tokens=("<s>", "</s>"), bos="<s>", eos="</s>", add_bos=True)


def test_bos_eos_policy(tok):
    plain = tok.encode("hello world", bos=False)
    assert tok.encode("hello world") == [tok.bos_id] + plain
    assert tok.encode("hello world", eos=True) == [tok.bos_id] + plain + [tok.eos_id]
    assert tok.decode(plain) == "hello world"
    assert tok.decode([tok.bos_id] + plain) == "hello world"                  # specials skipped
    assert tok.decode([tok.bos_id] + plain, skip_special_tokens=False).startswith("<s>")
    assert tok.encode_batch(["hello", "fox"], eos=True) == [tok.encode("hello", eos=True), tok.encode("fox", eos=True)]
    assert tok.pad_id == tok.eos_id


def test_save_and_load_keep_the_policy(tmp_path, tok):
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<s>" and cfg["add_bos_token"] is True
    again = Tokenizer.from_dir(tmp_path)
    assert (again.bos_id, again.eos_id, again.add_bos) == (tok.bos_id, tok.eos_id, True)
    assert again.encode("quick fox") == tok.encode("quick fox")


def test_model_config_supplies_ids_when_tokenizer_config_is_absent(tmp_path, tok):
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    config = Config.from_name("tiny-llama")
    config.bos_token_id, config.eos_token_id, config.add_bos_token = tok.bos_id, tok.eos_id, False
    again = Tokenizer.from_dir(tmp_path, config)
    assert again.bos_id == tok.bos_id and not again.add_bos
    assert again.encode("fox") == tok.encode("fox", bos=False)


def test_copy_tokenizer_files(tmp_path, tok):
    tok.save(tmp_path / "a")
    assert copy_tokenizer_files(tmp_path / "a", tmp_path / "b") == ["tokenizer.json", "tokenizer_config.json"]
    assert Tokenizer.from_dir(tmp_path / "b").encode("fox") == tok.encode("fox")


def test_errors_name_the_file(tmp_path, tok):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": ')
    with pytest.raises(CheckpointError) as info:
        Tokenizer.from_dir(tmp_path)
    assert info.value.where.startswith(f"{tmp_path / 'tokenizer_config.json'}:1:")
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(CheckpointError, match="cannot read tokenizer"):
        Tokenizer.from_dir(tmp_path)
