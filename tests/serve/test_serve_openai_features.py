"""What vLLM users rely on, through the official `openai` client: structured output (response_format
json_object / json_schema, `parse` with a pydantic model), function calling (tool_choice required, a
named function, auto, streaming, tool results sent back), logprobs for chat and completions, logit_bias,
token-id prompts, echo, and /metrics in the Prometheus text format."""
from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
import torch
from pydantic import BaseModel, Field

from openseason.checkpoint import load_model
from openseason.prompts import encode_chat, get_style

MODEL = "tiny-chat"
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"enum": ["UTC", "CET"]}}}}}


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    name: str = Field(max_length=10)


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me."}],
                                          **{"max_tokens": 120, "temperature": 0, **kwargs})


def test_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "A pet, please."}],
                                        response_format=Pet, max_tokens=120, temperature=0)
    pet = out.choices[0].message.parsed
    assert isinstance(pet, Pet) and out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_and_json_object_always_parse(client, seed):
    schema = WEATHER["function"]["parameters"]
    out = ask(client, temperature=1.0, seed=seed,
              response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)
    obj = ask(client, temperature=1.0, seed=seed, max_tokens=200, response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    free = ask(client, temperature=1.0, seed=seed, max_tokens=20)
    with pytest.raises(ValueError):   # the same request without a format is no JSON
        json.loads(free.choices[0].message.content)


def test_required_and_named_tool_calls(client):
    out = ask(client, tools=[WEATHER, TIME], tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    schema = {WEATHER["function"]["name"]: WEATHER, TIME["function"]["name"]: TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema["function"]["parameters"])

    named = ask(client, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("UTC", "CET")

    # streamed: the client puts the call together from the deltas
    chunks = list(ask(client, tools=[WEATHER], tool_choice="required", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads("".join(tc.function.arguments or "" for tc in calls)),
                        WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # the tool's result goes back as a `tool` message, after the assistant's call
    follow = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_auto_tool_choice_answers_in_text_when_the_model_does_not_call(client):
    out = ask(client, tools=[WEATHER], max_tokens=6)
    assert out.choices[0].message.tool_calls is None and out.choices[0].message.content


def test_chat_logprobs_are_the_model_distribution(client, serve_ckpt, tiny_tokenizer):
    messages = [{"role": "user", "content": "Tell me."}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    ids = encode_chat(messages, tiny_tokenizer, get_style("chatml"))
    with torch.no_grad():
        logits = load_model(serve_ckpt)(torch.tensor([ids]))[0, -1, :tiny_tokenizer.vocab_size]
    logp = torch.log_softmax(logits.float(), -1)
    first = content[0]
    assert first.logprob == pytest.approx(float(logp.max()), abs=1e-4)   # greedy: the most likely token
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(torch.topk(logp, 3).values.tolist(), abs=1e-4)
    assert first.top_logprobs[0].token == first.token


def test_completions_logprobs_echo_token_ids_and_logit_bias(client, tiny_tokenizer):
    text = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4, temperature=0,
                                     logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == text.choices[0].text and lp.text_offset[0] == 0
    ids = tiny_tokenizer.encode("The quick brown")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text and by_ids.usage.prompt_tokens == len(ids)
    echoed = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "The quick brown" + text.choices[0].text
    target = tiny_tokenizer.encode(" fox")[-1]
    forced = client.completions.create(model=MODEL, prompt=ids, max_tokens=3, temperature=0,
                                       logit_bias={str(target): 100})
    assert forced.choices[0].text == tiny_tokenizer.decode([target] * 3)


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
      "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999": 5}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 500}}, "logit_bias"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": [999999]}, "prompt"),
])
def test_what_is_not_supported_or_wrong_is_a_400_naming_it(live, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(live.url + path, json={"model": MODEL, "max_tokens": 4, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_metrics_in_prometheus_format(client, live):
    from prometheus_client.parser import text_string_to_metric_families

    ask(client, max_tokens=3)
    r = httpx.get(live.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("openseason_generation_tokens", "openseason_prompt_tokens", "openseason_num_requests_running",
                 "openseason_num_requests_waiting", "openseason_kv_cache_usage_bytes",
                 "openseason_time_to_first_token_seconds", "openseason_time_per_output_token_seconds",
                 "openseason_e2e_request_latency_seconds"):
        assert name in families, name
    generated = [s.value for s in families["openseason_generation_tokens"].samples if s.name.endswith("_total")]
    assert generated and generated[0] >= 3
    ttft = [s.value for s in families["openseason_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert ttft[0] >= 1
    assert httpx.get(live.url + "/metrics.json").json()["tokens_generated_total"] == generated[0]


def test_top_p_zero_is_greedy_and_models_list_the_limits(client, live):
    greedy = ask(client, max_tokens=6)
    assert ask(client, max_tokens=6, temperature=1.0, top_p=0.0).choices[0].message.content == \
        greedy.choices[0].message.content
    for entry in (httpx.get(live.url + "/v1/models").json()["data"][0], httpx.get(live.url + f"/v1/models/{MODEL}").json()):
        assert entry["context_length"] == 1024 and entry["max_completion_tokens"] == 1000


def test_vllm_sampling_extensions_through_extra_body(client, serve_ckpt, tiny_tokenizer):
    """top_k, min_p, repetition_penalty and ignore_eos as vLLM takes them (the openai client's extra_body):
    repetition_penalty against transformers' own logits processor on the same weights."""
    from transformers import RepetitionPenaltyLogitsProcessor

    greedy = ask(client, max_tokens=8).choices[0].message.content
    assert ask(client, max_tokens=8, temperature=1.0, seed=3, extra_body={"top_k": 1}).choices[0].message.content == greedy
    sampled = ask(client, max_tokens=8, temperature=1.0, seed=3).choices[0].message.content
    for off in (-1, 0):   # vLLM's "every token"
        assert ask(client, max_tokens=8, temperature=1.0, seed=3,
                   extra_body={"top_k": off}).choices[0].message.content == sampled
    assert ask(client, max_tokens=8, temperature=1.0, seed=3, extra_body={"min_p": 0}).choices[0].message.content \
        == sampled
    assert ask(client, max_tokens=8, temperature=1.0, seed=3, extra_body={"min_p": 1.0}).choices[0].message.content \
        == greedy   # only tokens as likely as the most likely one

    messages = [{"role": "user", "content": "Tell me."}]
    ids = encode_chat(messages, tiny_tokenizer, get_style("chatml"))
    model, penalty = load_model(serve_ckpt), RepetitionPenaltyLogitsProcessor(1.8)
    expected = []
    with torch.no_grad():
        for _ in range(8):
            seq = torch.tensor([ids + expected])
            logits = model(seq)[:, -1, :tiny_tokenizer.vocab_size].float()
            expected.append(int(penalty(seq, logits).argmax()))
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                         extra_body={"repetition_penalty": 1.8})
    assert out.choices[0].message.content == tiny_tokenizer.decode(expected)
    assert out.choices[0].message.content != greedy   # the penalty changed the answer



def test_ignore_eos_runs_past_an_eos_the_model_is_sure_of(tmp_path, tiny_tokenizer):
    from .conftest import start_server, tiny_model

    from openseason.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / MODEL, tiny_model(eos_bias=100.0), tokenizer=tiny_tokenizer)
    server, engine, _ = start_server(tmp_path / MODEL, max_batch=2)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        ends = client.completions.create(model=MODEL, prompt="x", max_tokens=5, temperature=0)
        assert ends.usage.completion_tokens == 1 and ends.choices[0].finish_reason == "stop"   # the EOS itself
        runs = client.completions.create(model=MODEL, prompt="x", max_tokens=5, temperature=0,
                                         extra_body={"ignore_eos": True})
        assert runs.usage.completion_tokens == 5 and runs.choices[0].finish_reason == "length"
    finally:
        server.close()
        engine.close()


@pytest.mark.parametrize("extra,param,code", [
    ({"bogus": 1}, "bogus", "unknown_parameter"),
    ({"best_of": 2}, "best_of", "unsupported_parameter"),
    ({"best_of": True}, "best_of", "unsupported_parameter"),   # not the integer 1
    ({"functions": [WEATHER["function"]]}, "functions", "unsupported_parameter"),
    ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
    ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
    ({"min_p": 1.5}, "min_p", "invalid_value"),
    ({"top_k": -2}, "top_k", "invalid_value"),
    ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
])
def test_a_field_the_server_would_not_carry_out_is_refused_by_name(client, extra, param, code):
    for call in (lambda: ask(client, max_tokens=2, extra_body=extra),
                 lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body=extra)):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        error = caught.value.body
        assert error["param"] == param and error["code"] == code, error
        if code == "unknown_parameter":
            assert error["message"] == f"Unrecognized request argument supplied: {param}"
    # what asks for nothing, and what changes nothing observable here, passes
    fine = ask(client, max_tokens=2, extra_body={"best_of": 1, "functions": None, "modalities": ["text"],
                                                 "store": True, "metadata": {"run": "a"},
                                                 "service_tier": "auto"})
    assert fine.usage.completion_tokens == 2
