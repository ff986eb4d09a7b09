"""encode_chat against training's tokenization, chat_stops, and the one rule resolve_chat_format documents."""
from __future__ import annotations

import json

import pytest

from openseason.chat_template import ChatTemplate
from openseason.data.sft import IGNORE, tokenize_conversation
from openseason.errors import DataError, OpenseasonError
from openseason.prompts import STYLES, chat_pieces, chat_stops, encode_chat, get_style, resolve_chat_format

SYSTEM = {"role": "system", "content": "Be nice."}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
WITH_INPUT = [{"role": "user", "content": "Add these numbers", "input": "2, 3"},
              {"role": "assistant", "content": "The sum is 5."},
              {"role": "user", "content": "Thanks!", "input": "2, 3"},
              {"role": "assistant", "content": "You're welcome."}]
CONVERSATIONS = {"multi-turn": TURNS, "system": [SYSTEM, *TURNS], "input": WITH_INPUT, "system+input": [SYSTEM, *WITH_INPUT]}


@pytest.fixture(params=["byte-level-bpe", "sentencepiece-like"])
def tokenizer(request, bpe_chat_tokenizer, sp_chat_tokenizer):
    return bpe_chat_tokenizer if request.param == "byte-level-bpe" else sp_chat_tokenizer


@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(STYLES))
def test_encode_chat_is_a_prefix_of_training_ids_at_every_reply(name, conv, tokenizer):
    messages = CONVERSATIONS[conv]
    trained = tokenize_conversation(messages, tokenizer, name, max_length=100_000)
    ids, labels = trained["input_ids"], trained["labels"]
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(replies) == (3 if conv in ("multi-turn", "system") else 2)
    for i in replies:
        prompt = encode_chat(messages[:i], tokenizer, name)  # ... user + generation prompt
        assert prompt == ids[:len(prompt)], f"{name}: prompt before reply {i} differs from training"
        # the prompt ends exactly where training starts putting loss on the reply
        assert labels[len(prompt) - 1] == IGNORE and labels[len(prompt)] != IGNORE
    # BOS only from the tokenizer's policy, once
    if tokenizer.add_bos:
        assert ids[0] == tokenizer.bos_id
        assert encode_chat(messages[:replies[0]], tokenizer, name).count(tokenizer.bos_id) == 1
    else:
        assert tokenizer.bos_id is None or tokenizer.bos_id not in ids[:1]


def test_style_argument_forms(tokenizer):
    messages = [SYSTEM, *TURNS[:3]]
    expected = encode_chat(messages, tokenizer, "chatml")
    style = get_style("chatml")
    assert encode_chat(messages, tokenizer, style) == expected
    assert encode_chat(messages, tokenizer, style.to_dict()) == expected
    # without the generation prompt the assistant header is not opened
    bare = encode_chat(messages, tokenizer, "chatml", add_generation_prompt=False)
    assert bare == expected[:len(bare)] and len(bare) < len(expected)


def test_eos_styles_put_the_eos_id_after_earlier_replies(tokenizer):
    prompt = encode_chat(TURNS[:3], tokenizer, "alpaca")
    assert prompt.count(tokenizer.eos_id) == 1
    kinds = [kind for _, kind in chat_pieces(TURNS[:4], tokenizer, "alpaca")]
    assert kinds.count("reply") == 2 and kinds[0] == ("bos" if tokenizer.add_bos else "prompt")


def test_bad_messages_are_data_errors(tokenizer):
    with pytest.raises(DataError, match="role 'assistant' where 'user' was expected"):
        encode_chat([{"role": "assistant", "content": "x"}], tokenizer, "chatml")
    with pytest.raises(OpenseasonError, match="unknown prompt style"):
        encode_chat(TURNS[:1], tokenizer, "chatmel")


def test_training_refuses_a_chat_template(bpe_chat_tokenizer):
    template = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert encode_chat(TURNS[:1], bpe_chat_tokenizer, template) == bpe_chat_tokenizer.encode("Hi", bos=False)
    with pytest.raises(OpenseasonError, match="no prompt/reply boundaries"):
        tokenize_conversation(TURNS[:2], bpe_chat_tokenizer, template, max_length=64)


def test_chat_stops(bpe_chat_tokenizer, sp_chat_tokenizer):
    tok = bpe_chat_tokenizer
    strings, ids = chat_stops("chatml", tok)
    assert strings == ("<|im_end|>", "<|im_start|>")
    assert ids == (tok.eos_id, tok.token_to_id("<|im_end|>"), tok.token_to_id("<|im_start|>"))
    assert chat_stops("alpaca", tok) == (("### Instruction:", "### Response:"), (tok.eos_id,))
    sp = sp_chat_tokenizer
    assert chat_stops("llama-2-chat", sp) == (("</s>", "[INST]"), (sp.eos_id,))  # </s> is EOS already
    assert chat_stops("plain") == ((), ())
    template = ChatTemplate("{{ messages }}", {"eos_token": "</s>"})
    assert chat_stops(template, sp) == (("</s>",), (sp.eos_id,))


# -- resolve_chat_format: the documented rule -------------------------------------------------------
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def _checkpoint(tmp_path, card=None, tok_cfg=None, jinja=None):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(parents=True)
    if card is not None:
        (ckpt / "run_card.json").write_text(json.dumps(card))
    if tok_cfg is not None:
        (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if jinja is not None:
        (ckpt / "chat_template.jinja").write_text(jinja)
    return ckpt


def test_rule_requested_wins(tmp_path):
    ckpt = _checkpoint(tmp_path, card={"prompt_style": "dolly"}, tok_cfg={"chat_template": TEMPLATE})
    fmt, reason = resolve_chat_format(ckpt, "vicuna")
    assert fmt is STYLES["vicuna"] and "requested" in reason
    fmt, reason = resolve_chat_format(ckpt, "chat-template")
    assert isinstance(fmt, ChatTemplate) and fmt.source == TEMPLATE and "requested" in reason
    assert resolve_chat_format(None, "oasst")[0] is STYLES["oasst"]


def test_rule_then_run_card_then_template_then_plain(tmp_path):
    for i, stored in enumerate(["dolly", {"name": "dolly", "stop_strings": ["### End"]}]):
        ckpt = _checkpoint(tmp_path / str(i), card={"prompt_style": stored}, tok_cfg={"chat_template": TEMPLATE})
        fmt, reason = resolve_chat_format(ckpt)
        assert fmt is STYLES["dolly"] and "run_card.json" in reason
    ckpt = _checkpoint(tmp_path / "t", card={"prompt_style": None},
                       tok_cfg={"chat_template": TEMPLATE, "eos_token": {"content": "</s>", "lstrip": False}})
    fmt, reason = resolve_chat_format(ckpt)
    assert isinstance(fmt, ChatTemplate) and fmt.source == TEMPLATE and fmt.eos_token == "</s>"
    assert "tokenizer_config.json" in reason
    # chat_template.jinja wins over tokenizer_config.json, as in transformers
    ckpt = _checkpoint(tmp_path / "j", tok_cfg={"chat_template": "old"}, jinja=TEMPLATE)
    assert resolve_chat_format(ckpt)[0].source == TEMPLATE
    fmt, reason = resolve_chat_format(_checkpoint(tmp_path / "none", card={"title": "base"}))
    assert fmt is STYLES["plain"] and "'plain'" in reason and "no prompt style" in reason
    assert resolve_chat_format(None)[0] is STYLES["plain"]


def test_rule_errors_name_the_file(tmp_path):
    ckpt = _checkpoint(tmp_path, card={"prompt_style": "alpacca"})
    with pytest.raises(OpenseasonError, match="unknown prompt style 'alpacca'") as err:
        resolve_chat_format(ckpt)
    assert err.value.where.endswith("run_card.json")
    with pytest.raises(OpenseasonError, match="chat template was requested, but it has none"):
        resolve_chat_format(_checkpoint(tmp_path / "x"), "chat-template")
    with pytest.raises(OpenseasonError, match="none is called 'default'"):
        resolve_chat_format(_checkpoint(tmp_path / "y", tok_cfg={"chat_template": [{"name": "tool_use",
                                                                                    "template": "x"}]}))
