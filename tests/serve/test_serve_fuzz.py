"""Standing hardening suite for the server: property tests (hypothesis) of the request schema, and an
API fuzz run (schemathesis) against the server's own /openapi.json. Any body gets an answer or an
OpenAI-style 4xx, never a 5xx or another exception; the server keeps serving afterwards.

OPENSEASON_FUZZ_EXAMPLES=N runs longer (N examples per generator; the default keeps the suite fast)."""
from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from openseason.serve.schema import (MAX_JSON_DEPTH, APIError, ChatCompletionRequest, CompletionRequest, decode_json,
                                     parse_request)

from .conftest import start_server

MODEL = "tiny-chat"
EXAMPLES = int(os.environ.get("OPENSEASON_FUZZ_EXAMPLES", "0"))
FUZZ = settings(deadline=None, database=None, derandomize=not EXAMPLES,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)

VALID = {
    ChatCompletionRequest: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                            "temperature": 0, "top_p": 0.9, "n": 1, "stop": ["x"], "seed": 1, "user": "u",
                            "presence_penalty": 0, "frequency_penalty": 0, "stream": False},
    CompletionRequest: {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2, "temperature": 1.0, "n": 1,
                        "seed": 3, "echo": False, "logprobs": 0, "suffix": ""},
}
FIELDS = sorted({k for body in VALID.values() for k in body} | {"max_completion_tokens", "stream_options",
                                                                  "name", "role", "content"})


@st.composite
def mutated(draw, cls):
    """A valid request with some fields replaced by arbitrary JSON values, some deleted, some added."""
    body = json.loads(json.dumps(VALID[cls]))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["set", "delete", "message"]))
        if action == "delete":
            body.pop(key, None)
        elif action == "message" and cls is ChatCompletionRequest:
            message = {"role": "user", "content": "hi"}
            message[draw(st.sampled_from(["role", "content", "name"]))] = draw(json_values)
            body["messages"] = [message] * draw(st.integers(1, 3))
        else:
            body[key] = draw(json_values)
    return body


def _check_parse(cls, body):
    try:
        req = parse_request(cls, body)
    except APIError as exc:
        assert 400 <= exc.status < 500 and exc.body()["error"]["message"]
    else:
        assert isinstance(req, cls)


@FUZZ
@given(cls=st.sampled_from([ChatCompletionRequest, CompletionRequest]), body=json_values)
def test_any_json_value_parses_or_is_a_4xx(cls, body):
    _check_parse(cls, body)


@FUZZ
@given(data=st.data(), cls=st.sampled_from([ChatCompletionRequest, CompletionRequest]))
def test_mutated_requests_parse_or_are_a_4xx(data, cls):
    _check_parse(cls, data.draw(mutated(cls)))


@FUZZ
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | st.text(max_size=50).map(lambda t: json.dumps(t).encode())
       | st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"\\u", b"d800", b"dc00", b"1", b",", b":"]),
                  max_size=300).map(b"".join))
def test_any_bytes_decode_or_are_a_400(raw):
    try:
        body = decode_json(raw)
    except APIError as exc:
        assert exc.status == 400
    else:   # what decodes is nested within bounds and encodes to UTF-8 again
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        assert _depth(body) <= MAX_JSON_DEPTH


def _depth(value) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


@pytest.fixture(scope="module")
def fuzzed(serve_ckpt):
    """A server whose every answer is short: max_tokens at most 4."""
    server, engine, _ = start_server(serve_ckpt, max_batch=4, max_queue=16, max_tokens_cap=4)
    yield server
    server.close()
    engine.close()


def _still_serving(url):
    assert httpx.get(url + "/health").json()["status"] == "ok"
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_live_app_answers_mutated_requests_with_results_or_4xx(fuzzed):
    paths = {ChatCompletionRequest: "/v1/chat/completions", CompletionRequest: "/v1/completions"}
    statuses = []
    with httpx.Client(base_url=fuzzed.url, timeout=30) as client:

        @settings(FUZZ, max_examples=EXAMPLES or 40)
        @given(data=st.data(), cls=st.sampled_from([ChatCompletionRequest, CompletionRequest]))
        def run(data, cls):
            body = data.draw(mutated(cls) | json_values)
            r = client.post(paths[cls], content=json.dumps(body), headers={"content-type": "application/json"})
            statuses.append(r.status_code)
            assert r.status_code < 500, r.text
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        run()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)
    _still_serving(fuzzed.url)


def test_openapi_schema_is_served(fuzzed):
    doc = httpx.get(fuzzed.url + "/openapi.json").json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["properties"]["model"]["enum"] == [MODEL] and "messages" in chat["required"]
    assert chat["properties"]["seed"]["anyOf"][0]["maximum"] == 2**64 - 1


def test_schemathesis_fuzz_finds_no_server_error(fuzzed):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/v1/chat/completions"),
                                                                   ("POST", "/v1/completions"), ("GET", "/health")}
    strategy = st.one_of([op.as_strategy(mode) for op in operations
                          for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    calls = []

    @settings(FUZZ, max_examples=EXAMPLES or 30)
    @given(case=strategy)
    def run(case):
        response = case.call(base_url=fuzzed.url, timeout=30)
        calls.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    run()
    assert len(calls) >= 30 and 200 in calls
    _still_serving(fuzzed.url)
