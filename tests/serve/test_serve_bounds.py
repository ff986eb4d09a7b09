"""Every request field at its bounds, on both endpoints: the minimum and the maximum are served;
just outside, the wrong type and a bool for a number get a 400 naming the field (never a 500);
the server keeps serving (checked once after all of them). The bounds themselves are in
openseason.serve.schema (README "Serving and chat")."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from openseason.generation.sampling import MIN_TEMPERATURE
from openseason.serve.schema import (MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_MODEL_CHARS, MAX_PROMPT_CHARS,
                                     MAX_PROMPTS, MAX_STOP_CHARS, MAX_TOKENS_LIMIT, MAX_USER_CHARS,
                                     ChatCompletionRequest, parse_request)

from .conftest import start_server

MODEL = "tiny-chat"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
CAP = 4                   # the server's --max-tokens-cap
MAX_N = 4                 # min(8, --max-batch)
U64 = 2**64 - 1
BASE = {CHAT: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        COMPLETIONS: {"model": MODEL, "prompt": "hi", "max_tokens": 1}}

OK, BAD = 200, 400
# (field, value, expected status, expected param when refused); fields every endpoint takes
COMMON = [
    ("model", MODEL, OK, None), ("model", "m" * MAX_MODEL_CHARS, 404, "model"),
    ("model", "m" * (MAX_MODEL_CHARS + 1), BAD, "model"), ("model", 5, BAD, "model"), ("model", True, BAD, "model"),
    ("model", None, BAD, "model"),
    ("max_tokens", 1, OK, None), ("max_tokens", CAP, OK, None), ("max_tokens", CAP + 1, BAD, "max_tokens"),
    ("max_tokens", 0, BAD, "max_tokens"), ("max_tokens", -1, BAD, "max_tokens"),
    ("max_tokens", MAX_TOKENS_LIMIT + 1, BAD, "max_tokens"), ("max_tokens", 10**30, BAD, "max_tokens"),
    ("max_tokens", 1.0, BAD, "max_tokens"), ("max_tokens", "1", BAD, "max_tokens"),
    ("max_tokens", True, BAD, "max_tokens"),
    ("temperature", 0, OK, None), ("temperature", MIN_TEMPERATURE, OK, None), ("temperature", 2, OK, None),
    ("temperature", MIN_TEMPERATURE / 2, BAD, "temperature"), ("temperature", 1e-300, BAD, "temperature"),
    ("temperature", -0.001, BAD, "temperature"), ("temperature", 2.001, BAD, "temperature"),
    ("temperature", 1e308, BAD, "temperature"), ("temperature", "1", BAD, "temperature"),
    ("temperature", True, BAD, "temperature"), ("temperature", None, BAD, "temperature"),
    ("top_p", 1, OK, None), ("top_p", 1e-9, OK, None), ("top_p", 0, OK, None), ("top_p", 1.001, BAD, "top_p"),
    ("top_p", -1, BAD, "top_p"), ("top_p", "0.5", BAD, "top_p"), ("top_p", True, BAD, "top_p"),
    ("n", 1, OK, None), ("n", MAX_N, OK, None), ("n", MAX_N + 1, BAD, "n"), ("n", 129, BAD, "n"),
    ("n", 0, BAD, "n"), ("n", -1, BAD, "n"), ("n", 1.0, BAD, "n"), ("n", "1", BAD, "n"), ("n", True, BAD, "n"),
    ("seed", 0, OK, None), ("seed", U64, OK, None), ("seed", U64 + 1, BAD, "seed"), ("seed", -1, BAD, "seed"),
    ("seed", 2**100, BAD, "seed"), ("seed", 1.0, BAD, "seed"), ("seed", "1", BAD, "seed"),
    ("seed", True, BAD, "seed"), ("seed", None, OK, None),
    ("presence_penalty", -2, OK, None), ("presence_penalty", 2, OK, None),
    ("presence_penalty", -2.01, BAD, "presence_penalty"), ("presence_penalty", 2.01, BAD, "presence_penalty"),
    ("presence_penalty", "0", BAD, "presence_penalty"), ("presence_penalty", True, BAD, "presence_penalty"),
    ("frequency_penalty", -2, OK, None), ("frequency_penalty", 2, OK, None),
    ("frequency_penalty", -2.01, BAD, "frequency_penalty"), ("frequency_penalty", 2.01, BAD, "frequency_penalty"),
    ("frequency_penalty", "0", BAD, "frequency_penalty"), ("frequency_penalty", False, BAD, "frequency_penalty"),
    ("stop", "x", OK, None), ("stop", ["a", "b", "c", "d"], OK, None), ("stop", ["s" * MAX_STOP_CHARS], OK, None),
    ("stop", None, OK, None), ("stop", ["a", "b", "c", "d", "e"], BAD, "stop"), ("stop", "", BAD, "stop"),
    ("stop", ["s" * (MAX_STOP_CHARS + 1)], BAD, "stop"), ("stop", "s" * (MAX_STOP_CHARS + 1), BAD, "stop"),
    ("stop", 5, BAD, "stop"), ("stop", [1], BAD, "stop"), ("stop", True, BAD, "stop"),
    ("stream", False, OK, None), ("stream", True, OK, None), ("stream", 1, BAD, "stream"),
    ("stream", "yes", BAD, "stream"),
    ("stream_options", {"include_usage": True}, OK, None), ("stream_options", None, OK, None),
    ("stream_options", {"include_usage": 1}, BAD, "stream_options.include_usage"),
    ("stream_options", "x", BAD, "stream_options"),
    ("user", "u" * MAX_USER_CHARS, OK, None), ("user", "u" * (MAX_USER_CHARS + 1), BAD, "user"),
    ("user", 5, BAD, "user"), ("user", True, BAD, "user"),
]
CHAT_ONLY = [
    ("messages", [{"role": "user", "content": "x" * 300}], OK, None),
    ("messages", [], BAD, "messages"), ("messages", "hi", BAD, "messages"), ("messages", None, BAD, "messages"),
    ("messages", [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1), BAD, "messages"),
    ("messages", [{"role": "user", "content": "x" * (MAX_PROMPT_CHARS + 1)}], BAD, "messages"),
    ("messages", [{"role": "user", "content": "x" * (MAX_PROMPT_CHARS // 2 + 1)}] * 2, BAD, "messages"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": "hi"}] * (MAX_CONTENT_PARTS + 1)}], BAD,
     "messages[0].content"),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "text": "hi"}]}], BAD, "messages[0].content"),
    ("messages", [{"role": 5, "content": "hi"}], BAD, "messages[0].role"),
    ("messages", [{"role": "user", "content": True}], BAD, "messages[0].content"),
    ("messages", [{"role": "user", "content": "hi", "name": "n" * MAX_USER_CHARS}], OK, None),
    ("messages", [{"role": "user", "content": "hi", "name": "n" * (MAX_USER_CHARS + 1)}], BAD,
     "messages[0].name"),
    ("messages", [{"role": "user", "content": "hi", "name": 5}], BAD, "messages[0].name"),
    ("max_completion_tokens", 1, OK, None), ("max_completion_tokens", CAP, OK, None),
    ("max_completion_tokens", CAP + 1, BAD, "max_completion_tokens"),
    ("max_completion_tokens", 0, BAD, "max_completion_tokens"),
    ("max_completion_tokens", MAX_TOKENS_LIMIT + 1, BAD, "max_completion_tokens"),
    ("max_completion_tokens", True, BAD, "max_completion_tokens"),
    ("logprobs", False, OK, None), ("logprobs", True, OK, None), ("logprobs", 1, BAD, "logprobs"),
    ("top_logprobs", 20, BAD, "top_logprobs"),   # needs logprobs: true
    ("top_logprobs", 21, BAD, "top_logprobs"), ("top_logprobs", -1, BAD, "top_logprobs"),
    ("tool_choice", "sometimes", BAD, "tool_choice"), ("tools", [{"type": "web"}], BAD, "tools[0].type"),
    ("response_format", {"type": "xml"}, BAD, "response_format.type"),
    ("logit_bias", {"1": 100}, OK, None), ("logit_bias", {"1": 100.5}, BAD, "logit_bias"),
    ("logit_bias", {"x": 1}, BAD, "logit_bias"), ("logit_bias", {"1": True}, BAD, "logit_bias"),
]
COMPLETIONS_ONLY = [
    ("prompt", "", OK, None), ("prompt", ["a"] * MAX_N, OK, None), ("prompt", "x" * 1000, OK, None),
    ("prompt", ["a"] * (MAX_N + 1), BAD, "prompt"), ("prompt", ["a"] * (MAX_PROMPTS + 1), BAD, "prompt"),
    ("prompt", [], BAD, "prompt"), ("prompt", [1, 2], OK, None), ("prompt", [[1], [2, 3]], OK, None),
    ("prompt", [1, -2], BAD, "prompt"), ("prompt", [[1], []], BAD, "prompt"), ("prompt", [10**6], BAD, "prompt"),
    ("prompt", 5, BAD, "prompt"),
    ("prompt", True, BAD, "prompt"), ("prompt", None, BAD, "prompt"),
    ("prompt", "x" * (MAX_PROMPT_CHARS + 1), BAD, "prompt"),
    ("prompt", ["x" * (MAX_PROMPT_CHARS // 2 + 1)] * 2, BAD, "prompt"),
    ("echo", False, OK, None), ("echo", True, OK, None), ("echo", "no", BAD, "echo"),
    ("logprobs", 0, OK, None), ("logprobs", None, OK, None), ("logprobs", 1, OK, None),
    ("logprobs", 21, BAD, "logprobs"), ("logprobs", -1, BAD, "logprobs"), ("logprobs", True, BAD, "logprobs"),
    ("suffix", "", OK, None), ("suffix", "x", BAD, "suffix"), ("suffix", "x" * (MAX_STOP_CHARS + 1), BAD, "suffix"),
    ("suffix", 5, BAD, "suffix"),
]
CASES = ([(CHAT, *c) for c in COMMON + CHAT_ONLY] + [(COMPLETIONS, *c) for c in COMMON + COMPLETIONS_ONLY])


def _id(case):
    path, field, value, status, _ = case
    shown = repr(value)
    if len(shown) > 30:
        shown = f"{type(value).__name__}{len(value) if hasattr(value, '__len__') else len(shown)}"
    return f"{path.split('/')[2]}-{field}-{shown}-{status}"


@pytest.fixture(scope="module")
def bounded(serve_ckpt):
    server, engine, _ = start_server(serve_ckpt, max_batch=MAX_N, max_queue=16, max_tokens_cap=CAP)
    with httpx.Client(base_url=server.url) as client:   # one client: no per-request setup
        yield client
    server.close()
    engine.close()


def _check(client, case) -> str:
    """'' when the server answered `case` as expected, else what went wrong."""
    path, field, value, status, param = case
    body = {**BASE[path], field: value}
    if field == "max_completion_tokens":
        body.pop("max_tokens")
    r = client.post(path, json=body)
    if r.status_code != status:
        return f"status {r.status_code}: {r.text[:200]}"
    if status == OK:
        return ""
    error = r.json()["error"]
    if set(error) != {"message", "type", "param", "code"} or not error["message"]:
        return f"not an OpenAI error: {error}"
    return "" if error["param"] == param else f"param {error['param']!r}: {error}"


def test_field_bounds(bounded):
    """All cases, eight at a time (each one is a loopback round trip; one by one they take seconds)."""
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda case: (_id(case), _check(bounded, case)), CASES))
    failed = [f"{name}: {problem}" for name, problem in outcomes if problem]
    assert not failed, "\n".join(failed)
    assert len(outcomes) > 200


def test_still_serving_after_all_those(bounded):
    """Runs after the cases above on the same server (one request after each would double the time)."""
    for path in (CHAT, COMPLETIONS):
        ok = bounded.post(path, json=BASE[path])
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 1
    assert bounded.get("/health").json()["status"] == "ok"


def test_seed_plus_n_must_fit_uint64(bounded):
    for path in (CHAT, COMPLETIONS):
        r = bounded.post(path, json={**BASE[path], "seed": U64 - 1, "n": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
        assert "seed + n - 1" in r.json()["error"]["message"]
        r = bounded.post(path, json={**BASE[path], "seed": U64 - 2, "n": 3})
        assert r.status_code == 200 and len(r.json()["choices"]) == 3


def test_schema_maxima_are_accepted_by_the_schema():
    """Maxima too long for the tiny model's context window are checked at the schema itself."""
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(MAX_MESSAGES)]
    parse_request(ChatCompletionRequest, {"model": MODEL, "messages": many, "max_tokens": MAX_TOKENS_LIMIT})
    big = [{"role": "user", "content": [{"type": "text", "text": "x" * (MAX_PROMPT_CHARS // MAX_CONTENT_PARTS)}]
            * MAX_CONTENT_PARTS}]
    parse_request(ChatCompletionRequest, {"model": MODEL, "messages": big})
