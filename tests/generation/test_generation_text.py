"""Streaming text: UTF-8 characters are never split, stop strings are cut even across token
boundaries and never shown, stream pieces join to the generate() result; finish reasons, token
counts, the context-window check and the CLI."""
from __future__ import annotations

import pytest
import torch

from openseason import LLM
from openseason.cli import main
from openseason.config import Config
from openseason.errors import OpenseasonError
from openseason.generation import Decoder, IncrementalDecoder, SamplingParams, StopMatcher
from openseason.model import KVCache


def _byte_alphabet() -> dict[int, str]:
    """Byte -> printable character, the byte-level BPE convention (printable bytes map to themselves,
    the others to code points from 256 upward, in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokens(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: multi-byte characters and stop strings always span several tokens."""
    table = _byte_alphabet()
    ids = [tokenizer.token_to_id(table[b]) for b in text.encode("utf-8")]
    assert None not in ids
    return ids


class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT: whatever the input, step n's logits put all mass on script[n]."""

    def __init__(self, script: list[int], vocab: int = 512):
        super().__init__()
        self.config = Config.from_name("tiny-neox")
        self.embed = torch.nn.Embedding(1, 1)
        self.script, self.vocab = script, vocab

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        return KVCache(Config(name="x", n_layer=0, n_embd=8, n_head=1), batch_size, max_len or 256)

    def forward(self, input_ids, *, kv_cache, last_only=False, **_):
        if kv_cache.length == 0:  # prefill: remember where the prompt ends
            self._start = input_ids.size(1)
        kv_cache.length += input_ids.size(1)
        step = kv_cache.length - self._start
        logits = torch.zeros(input_ids.size(0), 1, self.vocab)
        logits[:, :, self.script[min(step, len(self.script) - 1)]] = 10.0
        return logits


def scripted_llm(tokenizer, script):
    return LLM(ScriptedModel(script), tokenizer)


TEXT = "café déjà 日本語 😀 and ### End here"


def test_utf8_characters_are_never_split(gen_tokenizer):
    script = byte_tokens(gen_tokenizer, "café déjà 日本語 😀 naïve")
    llm = scripted_llm(gen_tokenizer, script)
    pieces = list(llm.stream([5], max_new_tokens=len(script), ignore_eos=True))
    assert "".join(pieces) == "café déjà 日本語 😀 naïve"
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5   # it really streamed, character by character
    assert "".join(pieces) == llm.generate([5], max_new_tokens=len(script), ignore_eos=True)


def test_stop_string_across_token_boundaries(gen_tokenizer):
    script = byte_tokens(gen_tokenizer, TEXT)
    llm = scripted_llm(gen_tokenizer, script)
    pieces = list(llm.stream([5], max_new_tokens=len(script), stop=["### End"], ignore_eos=True))
    assert "".join(pieces) == "café déjà 日本語 😀 and "
    assert not any("#" in p for p in pieces)   # a stop prefix that completes is never shown
    done = llm.complete([5], max_new_tokens=len(script), stop=["### End"], ignore_eos=True)
    assert done.text == "café déjà 日本語 😀 and "
    assert done.finish_reason == "stop" and done.stop_reason == "### End"
    # generation ends at the token that completed the stop string
    assert done.completion_tokens == len("café déjà 日本語 😀 and ### End".encode())


def test_false_stop_prefix_is_released(gen_tokenizer):
    text = "a ## b #### c ### End"
    script = byte_tokens(gen_tokenizer, text)
    llm = scripted_llm(gen_tokenizer, script)
    pieces = list(llm.stream([5], max_new_tokens=len(script), stop=["### End", "zz"], ignore_eos=True))
    assert "".join(pieces) == "a ## b #### c "


def test_stop_matcher_earliest_stop_wins():
    m = StopMatcher(["END", "X"])
    out = m.feed("abcE") + m.feed("NDxX")
    assert out == "abc" and m.matched == "END" and m.stopped
    assert m.feed("more") == "" and m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("abE") == "ab" and m.flush() == "E"


def test_stop_tokens_eos_and_length(gen_tokenizer):
    script = byte_tokens(gen_tokenizer, "hello") + [gen_tokenizer.eos_id] + byte_tokens(gen_tokenizer, "more")
    llm = scripted_llm(gen_tokenizer, script)
    at_eos = llm.complete([5], max_new_tokens=20)
    assert at_eos.text == "hello" and at_eos.finish_reason == "stop"
    assert at_eos.stop_reason == gen_tokenizer.eos_id and at_eos.completion_tokens == 6
    past_eos = llm.complete([5], max_new_tokens=8, ignore_eos=True)
    # past EOS it is an ordinary token, but special tokens stay out of the text (as vLLM and
    # transformers' decode(skip_special_tokens=True)); skip_special_tokens=False spells them
    assert past_eos.text == "hellomo" and past_eos.finish_reason == "length"
    assert past_eos.completion_tokens == 8
    spelled = llm.complete([5], max_new_tokens=8, ignore_eos=True, skip_special_tokens=False)
    assert spelled.text == "hello<|endoftext|>mo"
    # a stop string that is one special token stops at its id, although the text never shows it
    at_special = llm.complete([5], max_new_tokens=8, ignore_eos=True, stop="<|endoftext|>")
    assert at_special.text == "hello" and at_special.stop_reason == gen_tokenizer.eos_id
    o_id = script[4]
    at_token = llm.complete([5, 6], max_new_tokens=20, stop_token_ids=[o_id])
    assert at_token.text == "hell" and at_token.finish_reason == "stop" and at_token.prompt_tokens == 2


def test_incremental_decoder_matches_full_decode(gen_tokenizer):
    text = "The quick brown fox — café 日本語のテキスト 😀 émigré. " * 3
    ids = gen_tokenizer.encode(text)
    dec = IncrementalDecoder(gen_tokenizer)
    pieces = [dec.add(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == gen_tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_equals_generate_on_a_real_model(llm):
    for kwargs in (dict(), dict(temperature=0.9, top_p=0.9, seed=1), dict(stop=["e", "qu"])):
        pieces = list(llm.stream("The quick brown fox", max_new_tokens=30, ignore_eos=True, **kwargs))
        assert "".join(pieces) == llm.generate("The quick brown fox", max_new_tokens=30, ignore_eos=True, **kwargs)


def test_decoder_step_api(llm):
    ids = llm.encode("The quick brown fox")
    dec = Decoder(llm.model, [ids], SamplingParams(max_new_tokens=5, ignore_eos=True), tokenizer=llm.tokenizer)
    first = dec.prefill()
    assert len(first) == 1 and first[0].finish_reason is None
    events = [first[0]]
    while not dec.finished:
        events += dec.step()
    assert [e.token_id for e in events] == dec.completions[0].token_ids
    assert events[-1].finish_reason == "length" and len(events) == 5
    assert "".join(e.text for e in events) == dec.completions[0].text


def test_prompt_longer_than_context_is_a_clear_error(llm):
    block = llm.config.block_size
    ids = [5] * (block - 10)
    with pytest.raises(OpenseasonError, match=rf"prompt of {block - 10} tokens \+ max_new_tokens 20 .* "
                                              rf"context window of {block} tokens"):
        llm.generate(ids, max_new_tokens=20)
    with pytest.raises(OpenseasonError, match="context window"):
        llm.generate([5] * (block + 1), max_new_tokens=1)
    with pytest.raises(OpenseasonError, match="empty"):
        llm.generate([], max_new_tokens=1)
    assert len(llm.complete(ids, max_new_tokens=10, ignore_eos=True).token_ids) == 10  # exactly fits


def test_cli_stop_escapes():
    from openseason.generation.commands import unescape

    assert unescape(r"\n\n### End") == "\n\n### End"
    assert unescape(r"a\tb\\n") == "a\tb\\n" and unescape("café\\") == "café\\"


def test_cli_generate(neox_pair, capsys):
    ckpt = str(neox_pair[1])
    llm = LLM.load(ckpt, device="cpu")
    expected = llm.generate("The quick brown fox", max_new_tokens=12)
    assert main(["generate", ckpt, "--prompt", "The quick brown fox", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", ckpt, "--prompt", "The quick brown fox", "--max-new-tokens", "12", "--stream"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    stop = expected[6:8]
    assert main(["generate", ckpt, "--prompt", "The quick brown fox", "--max-new-tokens", "12", "--stop", stop]) == 0
    assert capsys.readouterr().out == llm.generate("The quick brown fox", max_new_tokens=12, stop=stop) + "\n"
    assert main(["generate", ckpt, "--prompt", "x", "--max-new-tokens", "100000"]) == 2
    assert "context window" in capsys.readouterr().err


def test_cli_generate_max_tokens_is_an_alias_and_must_be_positive(capsys):
    from openseason.cli import build_parser

    parser = build_parser()
    for flag in ("--max-new-tokens", "--max-tokens"):   # one name per concept in generate and chat
        assert parser.parse_args(["generate", "CKPT", "--prompt", "x", flag, "9"]).max_new_tokens == 9
    assert parser.parse_args(["generate", "CKPT", "--prompt", "x"]).max_new_tokens == 64
    with pytest.raises(SystemExit):
        main(["generate", "CKPT", "--prompt", "x", "--max-tokens", "0"])
    err = capsys.readouterr().err
    assert err.startswith("usage: openseason generate ") and "expected a positive integer, got 0" in err


def test_chat_uses_the_prompt_style_and_its_stop_strings(gen_tokenizer):
    from openseason.prompts import encode_chat

    script = byte_tokens(gen_tokenizer, "Sure: 5.\n\n### End and more")
    model = ScriptedModel(script)
    llm = LLM(model, gen_tokenizer, prompt_style="dolly")
    messages = [{"role": "user", "content": "add 2 and 3"}]
    assert llm.chat(messages, max_new_tokens=40, ignore_eos=True) == "Sure: 5.\n\n"
    assert "".join(llm.chat(messages, stream=True, max_new_tokens=40, ignore_eos=True)) == "Sure: 5.\n\n"
    ids, stops, stop_ids = llm.chat_prompt(messages)
    assert ids == encode_chat(messages, gen_tokenizer, "dolly") and "### End" in stops
    assert gen_tokenizer.eos_id in stop_ids
    assert llm.chat(messages, style="plain", max_new_tokens=40, ignore_eos=True, stop="5") == "Sure: "
    # the one rule for a model with no stored style: "plain"
    assert LLM(model, gen_tokenizer).prompt_style == "plain"


def test_missing_gpu_is_a_clear_error(neox_pair):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(OpenseasonError, match="no CUDA GPU"):
        LLM.load(neox_pair[1], device="cuda")
