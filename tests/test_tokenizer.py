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


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("where", ["jinja", "config", "config-list", "legacy-json"])
def test_save_keeps_the_chat_template_it_was_loaded_with(tmp_path, tok, where):
    """A tokenizer loaded from a chat model's directory and saved again (as every finetuned checkpoint
    is) keeps the chat template, wherever the source kept it; transformers reads the same template
    from the saved directory."""
    from openseason.chat_template import ChatTemplate

    source, saved = tmp_path / "source", tmp_path / "saved"
    tok.save(source)
    cfg = json.loads((source / "tokenizer_config.json").read_text())
    if where == "jinja":
        (source / "chat_template.jinja").write_text(CHAT)
    elif where == "config":
        cfg["chat_template"] = CHAT
    elif where == "config-list":
        cfg["chat_template"] = [{"name": "default", "template": CHAT}, {"name": "tool_use", "template": "{{ 1 }}"}]
    else:
        (source / "chat_template.json").write_text(json.dumps({"chat_template": CHAT}))
    (source / "tokenizer_config.json").write_text(json.dumps(cfg))
    Tokenizer.from_dir(source).save(saved)

    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "fox"},
                {"role": "user", "content": "again"}]
    expected = "<|user|>hello</s><|assistant|>fox</s><|user|>again</s><|assistant|>"
    assert ChatTemplate.from_dir(source).render(messages) == expected
    assert ChatTemplate.from_dir(saved).render(messages) == expected
    if where == "config-list":       # every named template survives, not only the default
        assert json.loads((saved / "tokenizer_config.json").read_text())["chat_template"] == cfg["chat_template"]
    if where == "legacy-json":        # a processor's file: transformers' tokenizers do not read it
        return
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_a_tokenizer_without_a_chat_template_saves_none(tmp_path, tok):
    from openseason.chat_template import ChatTemplate

    tok.save(tmp_path / "a")
    Tokenizer.from_dir(tmp_path / "a").save(tmp_path / "b")
    assert "chat_template" not in json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())
    assert ChatTemplate.from_dir(tmp_path / "b") is None
