"""LLM clients: the OpenAI-compatible HTTP client against a real local server (retries, timeouts,
concurrency limit), the scripted client's strictness, and the in-process client."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse

from openseason.errors import ConfigError
from openseason.generation.client import (CallFailed, LLMReply, HTTPClient, LocalClient, LLMRequest, ScriptedClient,
                                       UnexpectedCall, make_client)

from ..synth.conftest import fake_teacher, seeds_path  # noqa: F401  (fixtures: the CLI test drives synth)


class Server:
    """A tiny OpenAI-compatible app whose misbehaviour the test controls per prompt."""

    def __init__(self):
        self.app = FastAPI()
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.headers: list[dict] = []
        self.bodies: list[dict] = []
        self.responder = None  # prompt -> text, for pipeline runs over HTTP

        async def handle(body: dict, chat: bool, request: HTTPRequest):
            self.headers.append(dict(request.headers))
            self.bodies.append(body)
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            n = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
            busy = prompt.startswith("busy")  # timed-out "slow" requests may still be sleeping here
            self.in_flight += busy
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if prompt.startswith("flaky429") and n <= 2:
                    return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0"})
                if prompt.startswith("flaky503") and n <= 2:
                    return JSONResponse({"error": "overloaded"}, status_code=503)
                if prompt.startswith("bad"):
                    return JSONResponse({"error": "bad request"}, status_code=400)
                if prompt.startswith("slow"):
                    await asyncio.sleep(2.0)
                if prompt.startswith("busy"):
                    await asyncio.sleep(0.15)
                text = self.responder(prompt) if self.responder and not prompt.startswith(
                    ("busy", "slow", "hello", "hi", "flaky")) else f"echo:{prompt}"
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": 2}
                if chat:
                    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": usage}
                return {"choices": [{"text": text, "finish_reason": "length"}], "usage": usage}
            finally:
                self.in_flight -= busy

        @self.app.post("/v1/completions")
        async def completions(body: dict, request: HTTPRequest):
            return await handle(body, False, request)

        @self.app.post("/v1/chat/completions")
        async def chat(body: dict, request: HTTPRequest):
            return await handle(body, True, request)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    uv = uvicorn.Server(uvicorn.Config(srv.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if uv.started:
            break
        time.sleep(0.02)
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    uv.should_exit = True
    thread.join(timeout=5)


def test_completions_and_chat(server):
    b = HTTPClient(server.url, model="tiny", api_key="sk-test", backoff=0.01)
    [res] = b.complete_many([LLMRequest("hello there", max_tokens=7, stop=("\n",))])
    assert res == LLMReply("echo:hello there", "length", 2, 2)
    body = server.bodies[-1]
    assert body == {"max_tokens": 7, "temperature": 0.7, "top_p": 0.5, "stop": ["\n"], "model": "tiny",
                    "prompt": "hello there"}
    assert server.headers[-1]["authorization"] == "Bearer sk-test"
    chat = HTTPClient(server.url + "/v1", mode="chat", backoff=0.01)
    assert chat.complete(LLMRequest("hi")).text == "echo:hi"
    assert b.stats.calls == 1 and b.stats.prompt_tokens == 2


def test_retries_429_and_5xx_then_succeeds(server):
    b = HTTPClient(server.url, backoff=0.01, max_retries=3)
    results = b.complete_many([LLMRequest("flaky429 a"), LLMRequest("flaky503 b")])
    assert [r.text for r in results] == ["echo:flaky429 a", "echo:flaky503 b"]
    assert server.attempts["flaky429 a"] == 3 and server.attempts["flaky503 b"] == 3
    assert b.stats.retries == 4


def test_gives_up_with_reason_and_does_not_retry_4xx(server):
    b = HTTPClient(server.url, backoff=0.01, max_retries=1)
    [res] = b.complete_many([LLMRequest("flaky503 c")])
    assert isinstance(res, CallFailed) and res.reason.startswith("HTTP 503") and "2 attempts" in res.reason
    [res] = b.complete_many([LLMRequest("bad d")])
    assert isinstance(res, CallFailed) and not res.retryable and server.attempts["bad d"] == 1


def test_timeout_is_retried_then_reported(server):
    b = HTTPClient(server.url, timeout=0.3, backoff=0.01, max_retries=1)
    [res] = b.complete_many([LLMRequest("slow e")])
    assert isinstance(res, CallFailed) and res.reason.startswith("timeout after 0.3s")
    assert server.attempts["slow e"] == 2


def test_connection_errors_are_retried_and_reported():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    b = HTTPClient(f"http://127.0.0.1:{port}", backoff=0.01, max_retries=2)
    [res] = b.complete_many([LLMRequest("x")])
    assert isinstance(res, CallFailed) and res.reason.startswith("connection error") and b.stats.retries == 2


def test_concurrency_limit(server):
    server.max_in_flight = 0
    b = HTTPClient(server.url, max_concurrency=3)
    results = b.complete_many([LLMRequest(f"busy {i}") for i in range(10)])
    assert [r.text for r in results] == [f"echo:busy {i}" for i in range(10)]  # order kept
    assert server.max_in_flight == 3


def test_scripted_backend_is_strict():
    b = ScriptedClient([{"expect": "Task:", "text": "Yes"}, "plain"])
    assert b.complete(LLMRequest("Task: x")).text == "Yes"
    with pytest.raises(UnexpectedCall):
        ScriptedClient([{"expect": "Task:", "text": "Yes"}]).complete(LLMRequest("something else"))
    assert b.complete(LLMRequest("anything")).text == "plain"
    with pytest.raises(UnexpectedCall):
        b.complete(LLMRequest("one too many"))
    rec = ScriptedClient([{"prompt": "a", "text": "1"}, {"prompt": "b", "text": "2"}])
    assert rec.complete(LLMRequest("b")).text == "2" and rec.complete(LLMRequest("a")).text == "1"
    with pytest.raises(UnexpectedCall):
        rec.complete(LLMRequest("a"))  # each recorded answer is used once
    failing = ScriptedClient([{"error": "HTTP 500"}])
    assert failing.complete(LLMRequest("x")) == CallFailed("HTTP 500")
    with pytest.raises(AssertionError):
        ScriptedClient(["unused"]).assert_done()


def test_llm_backend_adapts_openseason_llm_api():
    class FakeLLM:  # the openseason.LLM surface: generate(prompt, max_new_tokens=, temperature=, top_p=, stop=)
        def __init__(self):
            self.calls = []

        def generate(self, prompt, *, max_new_tokens, temperature, top_p, stop):
            self.calls.append((prompt, max_new_tokens, temperature, top_p, stop))
            if prompt == "too long":
                raise ValueError("sequence of 9000 tokens is longer than the context window")
            return prompt.upper()

    llm = FakeLLM()
    b = LocalClient(llm)
    ok, bad = b.complete_many([LLMRequest("abc", max_tokens=5, temperature=0.0, top_p=1.0, stop=("\n",)),
                               LLMRequest("too long")])
    assert ok.text == "ABC" and llm.calls[0] == ("abc", 5, 0.0, 1.0, ["\n"])
    assert isinstance(bad, CallFailed) and "context window" in bad.reason


def test_make_backend_rejects_unknown_spec(tmp_path):
    with pytest.raises(ConfigError):
        make_client(str(tmp_path / "missing"))
    assert isinstance(make_client("http://127.0.0.1:1"), HTTPClient)


def test_llm_backend_with_a_real_tiny_checkpoint(tmp_path, tiny_tokenizer):
    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.model import GPT

    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tiny_tokenizer)
    backend = make_client(str(tmp_path / "ckpt"))
    assert isinstance(backend, LocalClient)
    ok, too_long = backend.complete_many([LLMRequest("Instruction: add 2 and 3.", max_tokens=5, temperature=0.0),
                                          LLMRequest("word " * 400, max_tokens=5)])
    assert isinstance(ok, LLMReply) and ok.finish_reason in ("stop", "length") and 0 < ok.completion_tokens <= 5
    assert ok.prompt_tokens == len(tiny_tokenizer.encode("Instruction: add 2 and 3."))
    assert isinstance(too_long, CallFailed) and not too_long.retryable


def test_self_instruct_cli_over_http(server, fake_teacher, seeds_path, tmp_path, capsys):
    from openseason.cli import main

    server.responder = lambda prompt: fake_teacher.complete(LLMRequest(prompt)).text
    try:
        args = ["synth", "self-instruct", "--seeds", str(seeds_path), "--backend", server.url, "--num", "6",
                "--out", str(tmp_path / "run"), "--concurrency", "4", "--no-progress"]
        assert main(args) == 0
        report = json.loads((tmp_path / "run/report.json").read_text())
        assert report["status"] == "complete" and report["counts"]["machine_instructions"] == 6
        assert report["run"]["backend"]["url"] == server.url + "/v1" and report["cost"]["calls"] > 6
        assert main(args) == 0  # rerun: answered from the logs, no HTTP call
        assert json.loads((tmp_path / "run/report.json").read_text())["cost"]["calls"] == 0
    finally:
        server.responder = None
