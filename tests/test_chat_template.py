"""Hugging Face chat templates against transformers' apply_chat_template: same text, same token ids, clear errors."""
from __future__ import annotations

import pytest

from openseason.chat_template import ChatTemplate, ChatTemplateError
from openseason.errors import OpenseasonError
from openseason.prompts import encode_chat

transformers = pytest.importorskip("transformers")

# Shapes people ship (written here, not downloaded).
LLAMA2 = (  # meta-llama/Llama-2-7b-chat-hf tokenizer_config.json
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
STRICT = """{%- set ns = namespace(seen_user=false) -%}
{%- for message in messages -%}
    {%- if message.role == 'system' and not loop.first -%}
        {{- raise_exception('System message must be at the beginning.') -}}
    {%- endif -%}
    {%- if message.role == 'assistant' and not ns.seen_user -%}
        {{- raise_exception('The first turn must come from the user, not the assistant.') -}}
    {%- endif -%}
    {%- if message.role == 'user' %}{% set ns.seen_user = true %}{% endif -%}
    {%- generation -%}<{{ message.role }}>{{ message.content | tojson }}</{{ message.role }}>{%- endgeneration -%}
    {%- if loop.index > 6 %}{% break %}{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<assistant>{% endif -%}"""
TEMPLATES = {"llama-2": LLAMA2, "chatml": CHATML, "zephyr": ZEPHYR, "strict": STRICT}

SYSTEM = {"role": "system", "content": "Be nice. <b>&</b>"}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "},
         {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "Thanks! ü"}]
CONVERSATIONS = [TURNS[:1], [SYSTEM, *TURNS[:1]], TURNS, [SYSTEM, *TURNS], [SYSTEM, *TURNS[:4]]]


@pytest.fixture(params=["byte-level-bpe", "sentencepiece-like"])
def pair(request, bpe_chat_tokenizer, sp_chat_tokenizer):
    """(our Tokenizer, {"bos_token": ..., ...}) for one of the two tokenizer kinds."""
    if request.param == "byte-level-bpe":
        return bpe_chat_tokenizer, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    return sp_chat_tokenizer, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def hf_tokenizer(ours, specials, template):
    from tokenizers import Tokenizer as HFTokenizer

    return transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(ours.backend.to_str()),
                                                chat_template=template, **specials)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("gen", [True, False])
def test_text_and_ids_match_transformers(name, gen, pair):
    ours, specials = pair
    hf = hf_tokenizer(ours, specials, TEMPLATES[name])
    template = ChatTemplate(TEMPLATES[name], specials)
    for messages in CONVERSATIONS:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert template.render(messages, add_generation_prompt=gen) == text
        ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)["input_ids"]
        assert encode_chat(messages, ours, template, add_generation_prompt=gen) == ids
    if name == "llama-2" and ours.add_bos:  # the template's own <s> only: BOS is not added twice
        assert encode_chat(TURNS[:1], ours, template).count(ours.bos_id) == 1


@pytest.mark.parametrize("name, messages, message", [
    ("llama-2", [TURNS[1], TURNS[0]], "Conversation roles must alternate user/assistant/user/assistant/..."),
    ("strict", [TURNS[0], SYSTEM], "System message must be at the beginning."),
    ("strict", [SYSTEM, TURNS[1]], "The first turn must come from the user, not the assistant."),
])
def test_refusals_are_chat_template_errors_with_the_templates_message(name, messages, message, pair):
    ours, specials = pair
    with pytest.raises(Exception, match=message.replace(".", r"\.")):  # transformers refuses the same way
        hf_tokenizer(ours, specials, TEMPLATES[name]).apply_chat_template(messages, tokenize=False)
    with pytest.raises(ChatTemplateError) as err:
        encode_chat(messages, ours, ChatTemplate(TEMPLATES[name], specials, origin="tokenizer_config.json"))
    assert isinstance(err.value, OpenseasonError)
    assert f"the chat template refused these messages: {message}" in str(err.value)
    assert err.value.where == "tokenizer_config.json" and "alternate" in err.value.hint


def test_broken_templates_are_clear_errors():
    with pytest.raises(ChatTemplateError, match="does not parse") as err:
        ChatTemplate("{% for m in messages %}\n{{ m.content }\n{% endfor %}", origin="ckpt/chat_template.jinja")
    assert err.value.where == "ckpt/chat_template.jinja:2"
    undefined = ChatTemplate("{{ messages[0].content.nope.deeper }}")
    with pytest.raises(ChatTemplateError, match="undefined value"):
        undefined.render(TURNS[:1])
    assert ChatTemplate("[{{ nothing }}]").render(TURNS[:1]) == "[]"  # lenient like transformers
    with pytest.raises(ChatTemplateError, match="failed"):  # the sandbox refuses Python internals
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(TURNS[:1])
    with pytest.raises(ChatTemplateError, match="failed on these messages"):
        ChatTemplate("{{ messages[0].content + 1 }}").render(TURNS[:1])


def test_alpaca_input_is_folded_into_the_content(bpe_chat_tokenizer):
    template = ChatTemplate(CHATML)
    text = template.render([{"role": "user", "content": "Add these", "input": "2, 3"}])
    assert text == "<|im_start|>user\nAdd these\n\n2, 3<|im_end|>\n<|im_start|>assistant\n"
