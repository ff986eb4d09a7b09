"""Fixtures for the server tests: a tiny random checkpoint on disk and a live server on loopback."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.model import GPT

EOS = 0  # <|endoftext|> in the tiny tokenizer


def tiny_model(eos_bias: float = -100.0, seed: int = 0, std: float = 0.2, block_size: int = 1024) -> GPT:
    """tiny-llama with a 1024-token window and an lm_head bias on EOS: -100 makes it never end on
    its own (so lengths are exact), 0 leaves it random, +100 makes EOS the first token. std=0.2 gives
    peaked, varied greedy outputs instead of near-ties."""
    torch.manual_seed(seed)
    config = Config.from_name("tiny-llama", block_size=block_size, lm_head_bias=True, eos_token_id=EOS,
                              bos_token_id=None, add_bos_token=False)
    model = GPT(config)
    model.init_weights(std=std)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[EOS] = eos_bias
    return model.eval()


@pytest.fixture(scope="session")
def serve_ckpt(tmp_path_factory, tiny_tokenizer):
    """A checkpoint directory named 'tiny-chat' storing the chatml prompt style."""
    path = tmp_path_factory.mktemp("ckpts") / "tiny-chat"
    save_checkpoint(path, tiny_model(), tokenizer=tiny_tokenizer, run_card={"prompt_style": "chatml"})
    return path


class LiveServer:
    """uvicorn serving `app` in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def start_server(ckpt, **kwargs):
    """(LiveServer, engine, settings) for `ckpt`; the caller closes both."""
    from openseason.serve.app import create_app
    from openseason.serve.server import load_for_serving

    engine, settings = load_for_serving(ckpt, device="cpu", log=lambda msg: None, **kwargs)
    return LiveServer(create_app(engine, settings)), engine, settings


@pytest.fixture(scope="module")
def live(serve_ckpt):
    server, engine, settings = start_server(serve_ckpt, max_batch=8, max_queue=32, max_tokens_cap=1000)
    yield server
    server.close()
    engine.close()


@pytest.fixture(scope="session")
def live_server_class():
    """LiveServer, for tests that build their own app (test modules cannot import conftest)."""
    return LiveServer
