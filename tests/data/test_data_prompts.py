"""Prompt styles: exact text per style, segments that join to the render, end-of-turn markers."""
from __future__ import annotations

import pytest

from openseason.errors import DataError, OpenseasonError
from openseason.prompts import STYLES, get_style

CONV = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]

EXPECTED = {
    "oasst": "<|system|>Be nice.<|endoftext|><|prompter|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>"
             "<|prompter|>2+2?<|endoftext|><|assistant|>4<|endoftext|>",
    "chatml": "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
              "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "llama-2-chat": "[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>",
    "vicuna": "Be nice. USER: Hi ASSISTANT: Hello!<EOS>USER: 2+2? ASSISTANT: 4<EOS>",
    "alpaca": "Be nice.\n\n### Instruction:\nHi\n\n### Response:Hello!<EOS>\n\n### Instruction:\n2+2?\n\n"
              "### Response:4<EOS>",
    "dolly": "Be nice.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### End\n\n### Instruction:\n2+2?\n\n"
             "### Response:\n4\n\n### End",
    "plain": "Be nice.\n\nHi\n\nHello!<EOS>\n\n2+2?\n\n4<EOS>",
    # MiniGPT-4's stage-2 template '###Human: {} ###Assistant: ' with end_sym '###', once per turn
    "minigpt4": "Be nice.###Human: Hi ###Assistant: Hello!######Human: 2+2? ###Assistant: 4###",
    # OpenFlamingo's interleaved text: no role markers, each reply closes its chunk
    "flamingo": "Be nice. Hi Hello!<|endofchunk|>2+2? 4<|endofchunk|>",
}


def test_every_style_has_an_expected_rendering():
    assert set(EXPECTED) == set(STYLES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_exact_and_segments_join(name):
    style = get_style(name)
    assert style.name == name
    assert style.render(CONV, add_generation_prompt=False, eos_text="<EOS>") == EXPECTED[name]
    segs = style.segments(CONV)
    assert "".join(t for t, _ in segs) == style.render(CONV, add_generation_prompt=False)
    trained = [t for t, flag in segs if flag]
    assert len(trained) == 2  # every assistant turn, not just the last
    marker = "" if style.end_with_eos else style.end_marker
    assert trained[0].strip().startswith("Hello!") and trained[0].endswith(marker)
    assert trained[1].endswith("4" + marker) or trained[1].endswith("4" + marker.rstrip())
    if not style.end_with_eos:
        assert any(s and s in style.end_marker for s in style.stop_strings)


def test_generation_prompt_ends_where_the_reply_starts():
    prompt = CONV[:4]
    assert get_style("chatml").render(prompt).endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert get_style("oasst").render(prompt).endswith("<|prompter|>2+2?<|endoftext|><|assistant|>")
    assert get_style("llama-2-chat").render(prompt).endswith("</s><s>[INST] 2+2? [/INST]")
    assert get_style("alpaca").render(prompt).endswith("### Instruction:\n2+2?\n\n### Response:")
    assert get_style("vicuna").render(prompt).endswith("USER: 2+2? ASSISTANT:")
    # without the generation prompt no assistant header is opened
    assert not get_style("chatml").render(prompt, add_generation_prompt=False).endswith("assistant\n")


def test_stanford_alpaca_templates_to_the_character():
    with_input = [{"role": "user", "content": "Sum these.", "input": "2, 3"}, {"role": "assistant", "content": "5"}]
    assert get_style("alpaca").render(with_input, add_generation_prompt=False) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum these.\n\n### Input:\n2, 3\n\n### Response:5")
    assert get_style("alpaca").render(with_input[:1] and [{"role": "user", "content": "Say hi."}]) == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:")
    assert get_style("dolly").render(with_input, add_generation_prompt=False) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSum these.\n\nInput:\n2, 3\n\n### Response:\n5\n\n### End")
    # other styles append the input to the user turn
    assert "<|prompter|>Sum these.\n\n2, 3<|endoftext|>" in get_style("oasst").render(with_input)


def test_unknown_style_lists_the_styles():
    with pytest.raises(OpenseasonError) as err:
        get_style("alpacca")
    for name in STYLES:
        assert name in str(err.value)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
    [{"role": "assistant", "content": "first"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "human", "content": "a"}],
    [],
])
def test_bad_messages_are_data_errors(messages):
    with pytest.raises(DataError):
        get_style("chatml").render(messages)
