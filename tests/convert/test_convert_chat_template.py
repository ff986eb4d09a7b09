"""A Hugging Face chat template survives convert from-hf -> our checkpoint -> convert to-hf, in each file it ships in."""
from __future__ import annotations

import json

import pytest

from openseason.chat_template import ChatTemplate
from openseason.checkpoint import load_config
from openseason.convert import convert_from_hf, convert_to_hf
from openseason.prompts import encode_chat, resolve_chat_format
from openseason.tokenizer import Tokenizer

TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ bos_token + '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n' + message['content'] + eos_token }}
{% else %}
{{ raise_exception('unexpected role ' + message['role']) }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"""
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize("family, stored_in", [("neox", "chat_template.jinja"), ("llama", "tokenizer_config.json"),
                                                ("neox", "chat_template.json")])
def test_round_trip_keeps_the_chat_template(family, stored_in, make_neox, make_llama, bpe_chat_tokenizer,
                                            sp_chat_tokenizer, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if family == "neox":
        tok, specials = bpe_chat_tokenizer, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        _, hf_dir = make_neox(vocab_size=tok.vocab_size, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    else:
        tok, specials = sp_chat_tokenizer, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        _, hf_dir = make_llama(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(tok.backend.to_str()),
                                     chat_template=TEMPLATE, **specials)
    hf_tok.save_pretrained(hf_dir, save_jinja_files=stored_in == "chat_template.jinja")
    if stored_in == "chat_template.json":  # the legacy processor file, not in tokenizer_config.json
        cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
        (hf_dir / "chat_template.json").write_text(json.dumps({"chat_template": cfg.pop("chat_template")}))
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert (hf_dir / "chat_template.jinja").exists() == (stored_in == "chat_template.jinja")

    ours = convert_from_hf(hf_dir, tmp_path / "ours")
    assert (ours / stored_in).exists()
    fmt, reason = resolve_chat_format(ours)
    assert isinstance(fmt, ChatTemplate) and fmt.source == TEMPLATE and stored_in in reason
    assert fmt.eos_token == specials["eos_token"]
    ours_tok = Tokenizer.from_dir(ours, load_config(ours))
    expected = hf_tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert encode_chat(MESSAGES, ours_tok, fmt) == expected

    back = convert_to_hf(ours, tmp_path / "back")
    assert (back / stored_in).read_text() == (hf_dir / stored_in).read_text()
    if stored_in != "chat_template.json":  # AutoTokenizer reads the other two (processors read the .json)
        reloaded = AutoTokenizer.from_pretrained(back)
        assert reloaded.chat_template == TEMPLATE
        assert reloaded.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == fmt.render(MESSAGES)
