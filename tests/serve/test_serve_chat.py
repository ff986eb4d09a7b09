"""`openseason chat`: streaming answers, history, /reset, /system, driven with piped input."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from openseason.prompts import get_style
from openseason.serve.chat import ChatSession, run_repl
from openseason.generation.engine import Engine

from .conftest import tiny_model
from ..generation.test_generation_engine import reference_greedy


@pytest.fixture(scope="module")
def session_parts(tiny_tokenizer):
    model = tiny_model()
    engine = Engine(model, tiny_tokenizer, max_batch=1, name="tiny")
    yield model, engine
    engine.close()


def expected_answer(model, tokenizer, messages, max_tokens):
    ids = tokenizer.encode(get_style("chatml").render(messages, add_generation_prompt=True))
    return tokenizer.decode(reference_greedy(model, ids, max_tokens, tokenizer.vocab_size),
                            skip_special_tokens=False)


def test_session_streams_and_keeps_history(session_parts, tiny_tokenizer):
    model, engine = session_parts
    session = ChatSession(engine, get_style("chatml"), max_new_tokens=8, temperature=0)
    pieces = list(session.send("hello"))
    assert len(pieces) > 1
    first = "".join(pieces)
    assert first == expected_answer(model, tiny_tokenizer, [{"role": "user", "content": "hello"}], 8)
    first = first.strip()  # history keeps the answer without surrounding whitespace
    # the second turn is generated with the first exchange in the prompt
    second = "".join(session.send("and then?"))
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and then?"}]
    assert second == expected_answer(model, tiny_tokenizer, history, 8)
    assert session.turns == [("hello", first), ("and then?", second.strip())]


def test_session_drops_oldest_turns_at_the_context_limit(session_parts):
    _, engine = session_parts
    session = ChatSession(engine, get_style("chatml"), max_new_tokens=4, temperature=0)
    long = "The quick brown fox jumps over the lazy dog. " * 25
    for _ in range(4):
        list(session.send(long))
    assert session.dropped >= 1 and len(session.turns) < 4


def test_repl_commands_with_piped_input(session_parts, tiny_tokenizer):
    model, engine = session_parts
    session = ChatSession(engine, get_style("chatml"), max_new_tokens=6, temperature=0)
    stdin = io.StringIO("hello\n/system Answer briefly.\n/system\nhi\n/history\n/reset\n/history\n/frob\nhi\n/exit\nnever read\n")
    stdout = io.StringIO()
    assert run_repl(session, stdin, stdout) == 0
    out = stdout.getvalue()
    hello = expected_answer(model, tiny_tokenizer, [{"role": "user", "content": "hello"}], 6)
    assert f"assistant> {hello}" in out
    assert "(system prompt set)" in out and "(system prompt: 'Answer briefly.')" in out
    with_system = expected_answer(model, tiny_tokenizer, [
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": hello.strip()}, {"role": "user", "content": "hi"}], 6)
    assert f"assistant> {with_system}" in out
    assert "(conversation reset)" in out and "unknown command /frob" in out
    # after /reset the same question is answered without the earlier turns (the system prompt stays)
    fresh = expected_answer(model, tiny_tokenizer, [{"role": "system", "content": "Answer briefly."},
                                                    {"role": "user", "content": "hi"}], 6)
    assert out.rstrip().endswith(f"assistant> {fresh}\nyou> /exit")
    assert session.turns == [("hi", fresh.strip())]
    assert "never read" not in out


def test_chat_cli_with_piped_stdin(serve_ckpt):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "openseason", "chat", str(serve_ckpt), "--temperature", "0",
                           "--max-tokens", "5", "--device", "cpu"],
                          input="hello\n/reset\n", capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "chatting with tiny-chat" in proc.stdout
    assert proc.stdout.count("assistant> ") == 1 and "(conversation reset)" in proc.stdout



def test_chat_cli_rejects_bad_sampling_settings(serve_ckpt, capsys):
    from openseason.cli import main

    assert main(["chat", str(serve_ckpt), "--top-p", "0"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
