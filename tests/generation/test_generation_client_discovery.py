"""HTTPClient against real loopback servers: the model and context window from /v1/models, valid
sampling values (greedy as temperature 0, top_p 1), and context-exceeded answers parsed into numbers."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from openseason.errors import ConfigError, OpenseasonError
from openseason.generation.client import CallFailed, HTTPClient, LLMRequest, context_failure


class Models:
    def __init__(self):
        self.app = FastAPI()
        self.data: list[dict] = []
        self.bodies: list[dict] = []

        @self.app.get("/v1/models")
        async def models():
            return {"object": "list", "data": self.data}

        @self.app.post("/v1/completions")
        async def completions(body: dict):
            self.bodies.append(body)
            return {"choices": [{"text": "ok", "finish_reason": "stop"}], "usage": {}}


@pytest.fixture(scope="module")
def models():
    srv = Models()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(srv.app, log_level="error"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    srv.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield srv
    uv.should_exit = True
    thread.join(5)
    sock.close()


def test_the_one_listed_model_and_its_context_are_used(models):
    for entry, context in (({"id": "m", "context_length": 2048}, 2048),    # openseason serve
                           ({"id": "m", "max_model_len": 4096}, 4096),     # vLLM
                           ({"id": "m", "meta": {"n_ctx_train": 512}}, 512),  # llama.cpp
                           ({"id": "m"}, None)):
        models.data = [entry]
        client = HTTPClient(models.url)
        client.prepare()
        assert client.model == "m" and client.context_length == context
        assert client.describe()["model_source"] == "the one model in /v1/models"
    client.complete(LLMRequest("hi", max_tokens=3, temperature=0.0, top_p=0.0))
    assert models.bodies[-1]["model"] == "m"
    assert (models.bodies[-1]["temperature"], models.bodies[-1]["top_p"]) == (0.0, 1.0)  # greedy, valid for vLLM


def test_several_models_need_a_choice(models):
    models.data = [{"id": "a"}, {"id": "b", "max_model_len": 128}]
    with pytest.raises(ConfigError, match="serves 2 models") as err:
        HTTPClient(models.url).prepare()
    assert "a, b" in err.value.hint
    client = HTTPClient(models.url, model="b")
    client.prepare()
    assert client.context_length == 128
    with pytest.raises(ConfigError, match="does not serve the model 'c'"):
        HTTPClient(models.url, model="c").prepare()


def test_an_unreachable_backend_is_a_clear_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OpenseasonError, match="cannot reach the backend"):
        HTTPClient(f"http://127.0.0.1:{port}").prepare()


def test_context_exceeded_messages_are_parsed():
    ours = ('{"error": {"message": "this model\'s maximum context length is 384 tokens, but 500 were requested (400 '
            'in the prompt, 100 for the completion); shorten the prompt or lower max_tokens", '
            '"code": "context_length_exceeded"}}')
    vllm = ("This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (1100 in the "
            "messages, 1000 in the completion). Please reduce the length of the messages or completion.")
    vllm_new = ("'max_tokens' is too large: 1024. This model's maximum context length is 2048 tokens and your "
                "request has 1100 input tokens (1024 > 2048 - 1100).")
    openai = ("This model's maximum context length is 4097 tokens, however you requested 4200 tokens (200 in your "
              "prompt; 4000 for the completion). Please reduce your prompt; or completion length.")
    for text, prompt, context in ((ours, 400, 384), (vllm, 1100, 2048), (vllm_new, 1100, 2048), (openai, 200, 4097)):
        failed = context_failure(400, text, "r")
        assert isinstance(failed, CallFailed) and failed.context_exceeded and not failed.retryable
        assert (failed.prompt_tokens, failed.context_length) == (prompt, context)
    assert context_failure(400, "top_p must be in (0, 1]", "r") is None
    assert context_failure(500, vllm, "r") is None
    vague = context_failure(400, "the request exceeds the available context size", "r")
    assert vague is None or vague.prompt_tokens is None
