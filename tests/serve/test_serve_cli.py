"""The `serve` / `chat` command lines: verb-level usage errors, flag aliases, shipped rails examples by
name, and a clear word for an unconverted Hugging Face folder. All in-process and fast."""
from __future__ import annotations

import json

import pytest

from openseason.cli import build_parser, main


@pytest.mark.parametrize("argv, usage", [
    (["chat", "CKPT", "--bad-flag"], "usage: openseason chat "),
    (["serve", "CKPT", "--bad-flag"], "usage: openseason serve "),
    (["guard", "check", "support", "hi", "--bad-flag"], "usage: openseason guard check "),
])
def test_an_unknown_flag_shows_the_verbs_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"openseason {' '.join(usage.split()[2:])}: error: unrecognized arguments: --bad-flag" in err
    assert "Traceback" not in err


def test_max_new_tokens_with_max_tokens_as_an_alias():
    parser = build_parser()
    for flag in ("--max-new-tokens", "--max-tokens"):
        assert parser.parse_args(["chat", "CKPT", flag, "7"]).max_new_tokens == 7
    assert parser.parse_args(["chat", "CKPT"]).max_new_tokens == 256


def test_chat_rejects_a_non_positive_max_new_tokens(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "CKPT", "--max-tokens", "0"])
    assert "openseason chat: error: argument --max-new-tokens/--max-tokens" in capsys.readouterr().err


def test_serve_takes_a_shipped_rails_example_by_name(monkeypatch, tmp_path, capsys):
    import openseason.serve.server as server
    from openseason.guard import EXAMPLES

    calls = []
    monkeypatch.setattr(server, "serve", lambda checkpoint, **kw: calls.append(kw["rails"]) or 0)
    assert main(["serve", "CKPT", "--rails", "support"]) == 0
    assert calls == [EXAMPLES / "support"]
    folder = tmp_path / "support"   # a folder of that name wins over the example
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "CKPT", "--rails", "support"]) == 0
    assert str(calls[-1]) == "support"
    assert main(["serve", "CKPT", "--rails", "no-such-rails"]) == 2   # before any checkpoint is loaded
    err = capsys.readouterr().err
    assert "no-such-rails: rails directory not found" in err and "support" in err and "Traceback" not in err


def test_serve_prefill_together_reaches_the_engine(monkeypatch, serve_ckpt):
    """`serve --prefill-together` turns on the engine's one-pass prefill; without it each prompt
    is prefilled alone."""
    import openseason.serve.server as server

    engines = []
    real = server.load_for_serving

    def load(*args, **kwargs):
        engine, settings = real(*args, **kwargs)
        engines.append(engine)
        engine.close()
        raise SystemExit(0)   # stop before uvicorn starts

    monkeypatch.setattr(server, "load_for_serving", load)
    for flags, together in (([], False), (["--prefill-together"], True)):
        with pytest.raises(SystemExit):
            main(["serve", str(serve_ckpt), "--device", "cpu", *flags])
        assert engines[-1].batch.prefill_together is together


@pytest.fixture
def hf_folder(tmp_path):
    """What `huggingface-cli download EleutherAI/pythia-70m` leaves (config.json is enough here)."""
    folder = tmp_path / "pythia-70m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 512,
        "num_hidden_layers": 6, "transformers_version": "4.40.0"}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("verb", [["serve"], ["chat"], ["generate", "--prompt", "hi"]])
def test_an_unconverted_hugging_face_folder_says_convert_it(verb, hf_folder, capsys):
    argv = [verb[0], str(hf_folder), *verb[1:], "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "this is a Hugging Face model folder" in err
    assert f"openseason convert from-hf {hf_folder} OUT" in err
    assert "unknown config keys" not in err and "Traceback" not in err
