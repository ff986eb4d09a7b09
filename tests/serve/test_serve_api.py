"""The HTTP API against the official `openai` client and raw HTTP: schema, streaming, stop, n, seed,
usage, the stored prompt style, /health and /metrics, and the model id."""
from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from openseason.checkpoint import load_model
from openseason.prompts import get_style

from ..generation.test_generation_engine import reference_greedy

MODEL = "tiny-chat"  # the checkpoint directory's name


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(serve_ckpt, tiny_tokenizer):
    model = load_model(serve_ckpt)

    def greedy_text(prompt_ids, n):
        return tiny_tokenizer.decode(reference_greedy(model, prompt_ids, n, tiny_tokenizer.vocab_size),
                                     skip_special_tokens=False)
    return greedy_text


def test_models_lists_the_checkpoint_directory_name(client, live):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(live.url + f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_completion_equals_unbatched_greedy(client, reference, tiny_tokenizer):
    prompt = "The quick brown fox"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")
    choice = out.choices[0]
    assert choice.text == reference(tiny_tokenizer.encode(prompt), 12)
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(tiny_tokenizer.encode(prompt))
    assert out.usage.completion_tokens == 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_chat_uses_the_stored_prompt_style(client, reference, tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 2 and 3"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    rendered = get_style("chatml").render(messages, add_generation_prompt=True)
    ids = tiny_tokenizer.encode(rendered)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.usage.prompt_tokens == len(ids)
    message = out.choices[0].message
    assert message.role == "assistant"
    assert message.content == reference(ids, 10)
    assert out.choices[0].finish_reason == "length"


def test_chat_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": "The lazy dog"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # really streamed, not one block
    assert "".join(pieces) == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 15
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_streaming_and_raw_sse_format(client, live):
    streamed = client.completions.create(model=MODEL, prompt="0123", max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in streamed)
    assert text == client.completions.create(model=MODEL, prompt="0123", max_tokens=8, temperature=0).choices[0].text
    with httpx.stream("POST", live.url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "0123", "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ")
        json.loads(event[len("data: "):])


def test_stop_sequences(client):
    prompt = "Below is an instruction"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0).choices[0].text
    stop = full[12:15]
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=[stop, "zzzz"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_n_seed_temperature_top_p(client):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=10, n=3,
                temperature=1.0, top_p=0.9)
    a = client.chat.completions.create(seed=11, **args)
    b = client.chat.completions.create(seed=11, **args)
    c = client.chat.completions.create(seed=12, **args)
    texts = lambda r: [ch.message.content for ch in r.choices]  # noqa: E731
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len(set(texts(a))) > 1
    assert a.usage.completion_tokens == 30
    greedy = client.chat.completions.create(**{**args, "temperature": 0})
    assert len(set(texts(greedy))) == 1


def test_completion_with_several_prompts(client, reference, tiny_tokenizer):
    prompts = ["The quick", "add 2"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    expect = [reference(tiny_tokenizer.encode(p), 6) for p in prompts]
    assert [c.text for c in out.choices] == [expect[0], expect[0], expect[1], expect[1]]


def test_default_max_tokens_respects_the_context(client, live):
    # no max_tokens on chat: the answer may run to the server default, never past the window
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert out.usage.completion_tokens == 256 and out.choices[0].finish_reason == "length"


def test_health_and_metrics(client, live):
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    before = httpx.get(live.url + "/metrics.json").json()
    client.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0)
    after = httpx.get(live.url + "/metrics.json").json()
    assert after["requests_total"] == before["requests_total"] + 1
    assert after["tokens_generated_total"] == before["tokens_generated_total"] + 4
    assert after["queue_length"] == 0 and after["tokens_per_second"] >= 0
    for key in ("requests_total", "tokens_generated_total", "tokens_per_second", "queue_length"):
        assert key in after


def test_model_name_override_and_default_style(tmp_path, tiny_tokenizer):
    from openseason.checkpoint import save_checkpoint
    from openseason.serve.server import load_for_serving

    from .conftest import tiny_model

    ckpt = save_checkpoint(tmp_path / "base-model", tiny_model(), tokenizer=tiny_tokenizer)
    notes = []
    engine, settings = load_for_serving(ckpt, model_name="my-assistant", device="cpu", log=notes.append)
    engine.close()
    assert settings.model_name == "my-assistant"
    assert settings.chat_format.name == "plain" and "no prompt style" in notes[0]
