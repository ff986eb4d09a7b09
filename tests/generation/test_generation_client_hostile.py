"""A misbehaving OpenAI-compatible server (stdlib, loopback) must not poison the stage logs, and the
environment's OpenAI key goes only where it belongs."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from openseason.errors import DataError
from openseason.generation.client import (CallFailed, LLMClient, LLMReply, HTTPClient, LLMRequest, ScriptedClient,
                                       make_client)


class _Handler(BaseHTTPRequestHandler):
    answers: dict = {}      # prompt -> the JSON body to answer with
    auth: list = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.auth.append(self.headers.get("Authorization"))
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        answer = self.answers.get(prompt, {"choices": [{"text": "fine", "message": {"content": "fine"}}]})
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("mode,answer,reason", [
    ("completions", {"choices": [{"text": None}]}, "text"),
    ("completions", {"choices": [{"text": 42}]}, "text"),
    ("completions", {"choices": [{"text": ["a"]}]}, "text"),
    ("completions", {"choices": [{"text": "ok", "finish_reason": 3}]}, "finish_reason"),
    ("completions", {"choices": [{"text": "ok"}], "usage": {"prompt_tokens": "many"}}, "malformed"),
    ("completions", {"choices": []}, "malformed"),
    ("completions", [1, 2], "malformed"),
    ("chat", {"choices": [{"message": {"content": None}}]}, "content"),
    ("chat", {"choices": [{"message": {"content": {"x": 1}}}]}, "content"),
    ("chat", {"choices": [{"message": None}]}, "malformed"),
])
def test_non_string_answers_are_failures_not_rows(url, mode, answer, reason):
    prompt = f"p-{mode}-{json.dumps(answer)}"
    _Handler.answers[prompt] = answer
    backend = HTTPClient(url, mode=mode, max_retries=0, api_key="")
    [res] = backend.complete_many([LLMRequest(prompt)])
    assert isinstance(res, CallFailed) and res.retryable and reason in res.reason, res
    assert backend.stats.failed == 1


def test_good_answer_still_works(url):
    [res] = HTTPClient(url, max_retries=0).complete_many([LLMRequest("hello")])
    assert isinstance(res, LLMReply) and res.text == "fine"


def test_any_backend_result_is_validated():
    class FakeClient(LLMClient):   # whatever a client returns, the base class validates it
        answers = [None, 7, "ok"]

        def _complete_many(self, requests):
            return [LLMReply(self.answers.pop(0), "stop", 1, 1) for _ in requests]

    backend = FakeClient()
    results = backend.complete_many([LLMRequest("a"), LLMRequest("b"), LLMRequest("c")])
    assert [type(r).__name__ for r in results] == ["CallFailed", "CallFailed", "LLMReply"]
    assert "text is NoneType" in results[0].reason and results[2].text == "ok"
    with pytest.raises(DataError, match=r"<script>\[0\]: scripted response 'text' must be a string"):
        ScriptedClient([{"text": 5}])


def test_env_openai_key_only_goes_to_https(url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.delenv("OPENSEASON_BACKEND_API_KEY", raising=False)
    _Handler.auth.clear()
    HTTPClient(url, max_retries=0).complete_many([LLMRequest("hello")])
    assert _Handler.auth == [None]                                   # plain http: the env key stays home
    assert HTTPClient("https://api.example.invalid/v1")._headers()["Authorization"] == "Bearer sk-env"
    # a key named for this backend is sent, over http too
    make_client(url, max_retries=0, api_key="local-key").complete_many([LLMRequest("hello")])
    monkeypatch.setenv("OPENSEASON_BACKEND_API_KEY", "from-env")
    HTTPClient(url, max_retries=0).complete_many([LLMRequest("hello")])
    assert _Handler.auth[1:] == ["Bearer local-key", "Bearer from-env"]


def test_api_key_flag(tmp_path, url, monkeypatch):
    from openseason.synth import commands
    import argparse

    parser = argparse.ArgumentParser()
    commands._backend_args(parser)
    args = parser.parse_args(["--backend", url, "--api-key", "k1"])
    assert commands._backend(args).api_key == "k1"
