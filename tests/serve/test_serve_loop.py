"""The event loop never waits on work: tokenizing (chat and completions) runs in a worker thread, so
/health answers while a prompt is being tokenized; counts are checked before any tokenizing. Bodies that
used to crash parsing (lone surrogates, deep nesting, NaN, huge integers) are 400s; a non-streaming
client that hangs up is cancelled quietly."""
from __future__ import annotations

import logging
import threading

import httpx
import pytest

from .conftest import start_server

MODEL = "tiny-chat"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class GatedTokenizer:
    """The real tokenizer, except that encoding waits until the test opens the gate."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def _wait(self):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"

    def encode(self, text, **kwargs):
        self._wait()
        return self.tokenizer.encode(text, **kwargs)

    def encode_batch(self, texts, **kwargs):
        self._wait()
        return self.tokenizer.encode_batch(texts, **kwargs)


@pytest.fixture(scope="module")
def gated(serve_ckpt):
    server, engine, _ = start_server(serve_ckpt, max_batch=4, max_queue=8, max_tokens_cap=8)
    app_server = server.server.config.app.state.server
    real = app_server.tokenizer
    yield server, app_server, real
    app_server.tokenizer = real
    server.close()
    engine.close()


@pytest.mark.parametrize("path,body", [
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "The quick brown fox " * 20000}],
            "max_tokens": 2}),
    (COMPLETIONS, {"model": MODEL, "prompt": ["The quick brown fox " * 20000, "x"], "max_tokens": 2}),
])
def test_health_answers_while_a_prompt_is_tokenized(gated, path, body):
    server, app_server, real = gated
    tokenizer = app_server.tokenizer = GatedTokenizer(real)
    result = {}
    caller = threading.Thread(target=lambda: result.update(r=httpx.post(server.url + path, json=body, timeout=60)))
    caller.start()
    try:
        assert tokenizer.entered.wait(30), "the request never reached the tokenizer"
        # the loop is free: /health and /v1/models answer while the tokenizer is held
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/health").json()["status"] == "ok"
            assert client.get("/v1/models").status_code == 200
        assert "r" not in result   # still tokenizing: the answers above did not wait for it
    finally:
        tokenizer.gate.set()
        caller.join(60)
        app_server.tokenizer = real
    # 80,000 words do not fit the 1024-token window: a clear 400 after tokenizing, not a hang
    assert result["r"].status_code == 400 and result["r"].json()["error"]["code"] == "context_length_exceeded"


def test_prompt_count_is_checked_before_tokenizing(gated):
    server, app_server, real = gated
    tokenizer = app_server.tokenizer = GatedTokenizer(real)
    tokenizer.gate.set()
    try:
        r = httpx.post(server.url + COMPLETIONS, json={"model": MODEL, "prompt": ["x"] * 100, "n": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = httpx.post(server.url + COMPLETIONS, json={"model": MODEL, "prompt": ["x"] * 2, "n": 3})
        assert r.status_code == 400 and "prompts x n" in r.json()["error"]["message"]
        assert tokenizer.calls == 0
    finally:
        app_server.tokenizer = real


def test_real_tokenizer_path_releases_the_gil(gated):
    """Server.encode goes through encode_batch (tokenizers releases the GIL there, not in encode)."""
    _, app_server, real = gated
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode(self, text, **kw):
            calls.append("encode")
            return real.encode(text, **kw)

        def encode_batch(self, texts, **kw):
            calls.append("encode_batch")
            return real.encode_batch(texts, **kw)

    app_server.tokenizer = Spy()
    try:
        assert app_server.encode("hello there") == real.encode("hello there")
        app_server.chat_prompt([{"role": "user", "content": "hello"}])
        assert calls and set(calls) == {"encode_batch"}
    finally:
        app_server.tokenizer = real


RAW_BAD = [
    ("lone high surrogate", b'{"model": "tiny-chat", "prompt": "\\ud800"}'),
    ("lone low surrogate in a key", b'{"model": "tiny-chat", "prompt": "x", "\\udc00": 1}'),
    ("surrogate in messages", b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "a\\udbffb"}]}'),
    ("utf-8 encoded surrogate", b'{"model": "tiny-chat", "prompt": "\xed\xa0\x80"}'),
    ("200,000 deep", b"[" * 200_000 + b"]" * 200_000),
    ("65 deep in an ignored field", b'{"model": "tiny-chat", "prompt": "x", "extra": ' + b"[" * 65 + b"]" * 65 + b"}"),
    ("deep objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("unterminated escaped quotes", b'{"prompt": "' + b'\\"[' * 200_000),   # linear to scan, not quadratic
    ("NaN", b'{"model": "tiny-chat", "prompt": "x", "temperature": NaN}'),
    ("Infinity", b'{"model": "tiny-chat", "prompt": "x", "top_p": -Infinity}'),
    ("5000-digit integer", b'{"model": "tiny-chat", "prompt": "x", "seed": ' + b"9" * 5000 + b"}"),
    ("invalid utf-8", b'{"model": "tiny-chat", "prompt": "\xff"}'),
    ("utf-8 BOM", b'\xef\xbb\xbf{"model": "tiny-chat", "prompt": "x"}'),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("name,raw", RAW_BAD, ids=[b[0] for b in RAW_BAD])
def test_unparseable_bodies_are_400(gated, path, name, raw):
    server, _, _ = gated
    r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] in ("invalid_json", "invalid_value")


def test_paired_surrogates_and_deep_strings_are_fine(gated):
    server, _, _ = gated
    for raw in (b'{"model": "tiny-chat", "prompt": "\\ud83d\\ude00", "max_tokens": 1}',
                b'{"model": "tiny-chat", "prompt": "' + b"[" * 1000 + b'\\"", "max_tokens": 1}'):
        r = httpx.post(server.url + COMPLETIONS, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_non_streaming_disconnect_is_quiet(tmp_path, tiny_tokenizer):
    from openseason.checkpoint import save_checkpoint

    from .conftest import tiny_model
    from .test_serve_errors import _wait

    ckpt = save_checkpoint(tmp_path / "tiny-chat", tiny_model(block_size=8192), tokenizer=tiny_tokenizer)
    server, engine, _ = start_server(ckpt, max_batch=4, max_queue=4, max_tokens_cap=8000)
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn", "")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        bodies = [(COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 8000, "n": 2}),
                  (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 8000})]
        for count, (path, body) in enumerate(bodies, 1):
            with pytest.raises(httpx.TimeoutException):
                httpx.post(server.url + path, json={**body, "temperature": 0}, timeout=0.5)
            _wait(lambda: engine.metrics()["requests_cancelled"] == count and engine.running == 0)
        assert httpx.get(server.url + "/health").status_code == 200   # and the handler has finished
        problems = [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not problems, [r.getMessage() for r in problems]
    finally:
        for logger in loggers:
            logger.removeHandler(records)
        server.close()
        engine.close()
