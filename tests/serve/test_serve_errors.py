"""Bad input gets an OpenAI-style 4xx and the server keeps serving; API keys; body limit; the 503 queue;
a client that goes away cancels its generation."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from .conftest import start_server

MODEL = "tiny-chat"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

BAD_REQUESTS = [
    # (name, path, body or raw bytes, status, param, code)
    ("malformed json", CHAT, b'{"model": "tiny-chat", "messages": [', 400, None, "invalid_json"),
    ("not an object", CHAT, b'[1, 2]', 400, None, None),
    ("missing messages", CHAT, {"model": MODEL}, 400, "messages", "missing_required_parameter"),
    ("empty messages", CHAT, {"model": MODEL, "messages": []}, 400, "messages", "invalid_value"),
    ("messages wrong type", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", "invalid_value"),
    ("content wrong type", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "invalid_value"),
    ("unknown role", CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages[0].role", "invalid_value"),
    ("tool result with no call", CHAT, {"model": MODEL, "messages": [{"role": "tool", "content": "hi"}]}, 400,
     "messages[0]", "invalid_value"),
    ("function role", CHAT, {"model": MODEL, "messages": [{"role": "function", "content": "hi"}]}, 400,
     "messages[0].role", "invalid_value"),
    ("bad turn order", CHAT, {"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}, 400,
     "messages", "invalid_value"),
    ("temperature as string", CHAT, {"model": MODEL, "messages": USER, "temperature": "hot"}, 400,
     "temperature", "invalid_value"),
    ("temperature too high", CHAT, {"model": MODEL, "messages": USER, "temperature": 3}, 400,
     "temperature", "invalid_value"),
    ("top_p negative", CHAT, {"model": MODEL, "messages": USER, "top_p": -0.1}, 400, "top_p", "invalid_value"),
    ("max_tokens as string", CHAT, {"model": MODEL, "messages": USER, "max_tokens": "10"}, 400, "max_tokens",
     "invalid_value"),
    ("negative max_tokens", CHAT, {"model": MODEL, "messages": USER, "max_tokens": -5}, 400, "max_tokens",
     "invalid_value"),
    ("zero max_tokens", COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens",
     "invalid_value"),
    ("huge max_tokens", CHAT, {"model": MODEL, "messages": USER, "max_tokens": 10**9}, 400, "max_tokens",
     "invalid_value"),
    ("n too large", CHAT, {"model": MODEL, "messages": USER, "n": 50}, 400, "n", "invalid_value"),
    ("n zero", CHAT, {"model": MODEL, "messages": USER, "n": 0}, 400, "n", "invalid_value"),
    ("too many stops", CHAT, {"model": MODEL, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400,
     "stop", "invalid_value"),
    ("stream not bool", CHAT, {"model": MODEL, "messages": USER, "stream": "yes"}, 400, "stream", "invalid_value"),
    ("top_logprobs without logprobs", CHAT, {"model": MODEL, "messages": USER, "top_logprobs": 2}, 400,
     "top_logprobs", "invalid_value"),
    ("unknown model", CHAT, {"model": "gpt-4", "messages": USER}, 404, "model", "model_not_found"),
    ("unknown model (completions)", COMPLETIONS, {"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
    ("prompt wrong type", COMPLETIONS, {"model": MODEL, "prompt": 12}, 400, "prompt", "invalid_value"),
    ("echo with logprobs", COMPLETIONS, {"model": MODEL, "prompt": "x", "echo": True, "logprobs": 1}, 400, "echo",
     "unsupported_parameter"),
    ("context too long", COMPLETIONS, {"model": MODEL, "prompt": "The quick brown fox " * 300, "max_tokens": 10},
     400, "max_tokens", "context_length_exceeded"),
    ("prompt plus max_tokens too long", COMPLETIONS,
     {"model": MODEL, "prompt": "The quick brown fox " * 150, "max_tokens": 900}, 400, "max_tokens",
     "context_length_exceeded"),
]


@pytest.mark.parametrize("name,path,body,status,param,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_openai_error_and_server_keeps_serving(live, name, path, body, status, param, code):
    if isinstance(body, bytes):
        r = httpx.post(live.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(live.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    ok = httpx.post(live.url + COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_context_error_message_is_clear(live):
    r = httpx.post(live.url + COMPLETIONS, json={"model": MODEL, "prompt": "The quick brown fox " * 300}, timeout=30)
    message = r.json()["error"]["message"]
    assert "maximum context length is 1024 tokens" in message and "in the prompt" in message


def test_openai_client_raises_its_own_errors(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=USER)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=-1)
    assert info.value.body["param"] == "max_tokens"


def test_unknown_route_and_oversized_body(live):
    r = httpx.get(live.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    r = httpx.post(live.url + CHAT, json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(live.url + "/health").status_code == 200


@pytest.fixture(scope="module")
def keyed(serve_ckpt):
    server, engine, _ = start_server(serve_ckpt, api_key="s3cret", max_batch=2, max_queue=4)
    yield server
    server.close()
    engine.close()


def test_api_key(keyed):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        r = httpx.post(keyed.url + COMPLETIONS, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200   # liveness stays open
    assert httpx.get(keyed.url + "/").status_code == 200          # the page asks for the key itself
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="s3cret", max_retries=0)
    assert good.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_full_queue_answers_503_with_retry_after(serve_ckpt):
    server, engine, _ = start_server(serve_ckpt, max_batch=1, max_queue=2)
    try:
        results = []

        def call():
            with httpx.Client(timeout=120) as c:
                r = c.post(server.url + COMPLETIONS,
                           json={"model": MODEL, "prompt": "The quick", "max_tokens": 150, "temperature": 0})
            results.append(r)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy = [r for r in results if r.status_code == 503]
        done = [r for r in results if r.status_code == 200]
        assert len(busy) + len(done) == 8 and busy and done
        for r in busy:
            assert r.headers["retry-after"] == "2"
            assert r.json()["error"]["code"] == "server_busy" and r.json()["error"]["type"] == "server_error"
        assert all(r.json()["usage"]["completion_tokens"] == 150 for r in done)
        assert engine.metrics()["requests_rejected"] == len(busy)
    finally:
        server.close()
        engine.close()


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_disconnect_cancels_generation(tmp_path, tiny_tokenizer):
    from openseason.checkpoint import save_checkpoint

    from .conftest import tiny_model

    # a long window, so a request that is not cancelled runs for seconds even on a fast machine
    ckpt = save_checkpoint(tmp_path / "tiny-chat", tiny_model(block_size=8192), tokenizer=tiny_tokenizer)
    server, engine, _ = start_server(ckpt, max_batch=4, max_queue=4, max_tokens_cap=8000)
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 8000, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + COMPLETIONS, json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break   # the first token arrived; now hang up
        _wait(lambda: engine.metrics()["requests_cancelled"] == 1 and engine.running == 0)
        first = engine.metrics()["tokens_generated_total"]
        assert first < 8000

        # a non-streaming client that times out is noticed too
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server.url + COMPLETIONS, json={**body, "stream": False}, timeout=0.5)
        _wait(lambda: engine.metrics()["requests_cancelled"] == 2 and engine.running == 0)
        assert engine.metrics()["tokens_generated_total"] - first < 8000
    finally:
        server.close()
        engine.close()
