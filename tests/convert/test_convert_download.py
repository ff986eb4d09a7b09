"""`openseason download`: offline and unreachable Hub fail fast and clearly; a cached model converts
through the same path as from-hf."""
from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch

from openseason.checkpoint import load_model, read_run_card
from openseason.convert import download
from openseason.convert.download import weight_patterns
from openseason.errors import CheckpointError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill_cache(cache, repo_id, hf_dir, sha="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub keeps in its cache: refs/main -> snapshots/<sha>/files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(hf_dir, repo / "snapshots" / sha)


def test_offline_without_cache_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and the model is not in the local") as info:
        download("EleutherAI/pythia-14m", out, cache_dir=tmp_path / "cache")
    assert "hf://EleutherAI/pythia-14m" in str(info.value)
    assert not out.exists()


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub") as info:
        download("EleutherAI/pythia-14m", out, cache_dir=tmp_path / "cache", endpoint=endpoint, timeout=2)
    assert endpoint in str(info.value) and "convert from-hf" in str(info.value)
    assert not out.exists()


def test_cli_download_offline_exit_2(monkeypatch, tmp_path, capsys):
    from openseason.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["download", "EleutherAI/pythia-14m", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openseason: error:") and "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("offline", [True, False])
def test_cached_model_converts_offline(offline, make_llama, monkeypatch, tmp_path):
    """With the files in the Hugging Face cache, download works with no network (offline mode, or a Hub
    that cannot be reached) and converts exactly like from-hf."""
    hf_model, hf_dir = make_llama()
    _fill_cache(tmp_path / "cache", "tiny/llama", hf_dir)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ckpt = download("tiny/llama", tmp_path / "out", cache_dir=tmp_path / "cache",
                    endpoint=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    ids = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(load_model(ckpt)(ids), hf_model(ids).logits, atol=1e-4, rtol=0)
    card = read_run_card(ckpt)
    assert card["source"]["repo_id"] == "tiny/llama"
    assert card["source"]["architecture"] == "LlamaForCausalLM"
    assert '"hf_id": "tiny/llama"' in (ckpt / "config.json").read_text()


def test_bad_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hub repository id"):
        download("pythia-14m", tmp_path / "out")


def test_weight_patterns_prefer_safetensors():
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
    assert weight_patterns(both, "x/y") == ["model.safetensors"]
    sharded = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "pytorch_model.bin.index.json"]
    assert weight_patterns(sharded, "x/y") == ["model.safetensors.index.json", "model-*-of-*.safetensors"]
    assert weight_patterns(["pytorch_model.bin.index.json"], "x/y")[0] == "pytorch_model.bin.index.json"
    with pytest.raises(CheckpointError, match="(?s)no weights in a supported layout.*model.gguf"):
        weight_patterns(["config.json", "model.gguf"], "x/y")


def test_download_from_a_hub(make_llama, bin_writer, fake_hub, monkeypatch, tmp_path, tiny_tokenizer):
    """Through huggingface_hub against a loopback Hub: only config, tokenizer and one weight layout are
    fetched (safetensors over .bin), then the files convert exactly as from-hf would."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hf_model, hf_dir = make_llama(tokenizer=tiny_tokenizer, vocab_size=512)
    torch.save({"unused": torch.zeros(1)}, hf_dir / "pytorch_model.bin")  # must not be fetched
    (hf_dir / "model.gguf").write_bytes(b"not for us")
    endpoint, log = fake_hub({"tiny/llama": hf_dir})
    ckpt = download("tiny/llama", tmp_path / "out", cache_dir=tmp_path / "cache", endpoint=endpoint, timeout=5)

    fetched = {path.rsplit("/", 1)[-1] for method, path in log if method == "GET" and "/resolve/" in path}
    assert fetched == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                       "generation_config.json"}
    ids = torch.tensor([tiny_tokenizer.encode("The quick brown fox")])
    with torch.no_grad():
        torch.testing.assert_close(load_model(ckpt)(ids), hf_model(ids).logits, atol=1e-4, rtol=0)
    assert (ckpt / "tokenizer.json").exists()
    source = read_run_card(ckpt)["source"]
    assert source["repo_id"] == "tiny/llama" and source["architecture"] == "LlamaForCausalLM"


def test_download_checks_architecture_before_weights(make_llama, fake_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _, hf_dir = make_llama()
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    endpoint, log = fake_hub({"tiny/mixtral": hf_dir})
    with pytest.raises(CheckpointError, match="(?s)unsupported architecture MixtralForCausalLM.*LlamaForCausalLM"):
        download("tiny/mixtral", tmp_path / "out", cache_dir=tmp_path / "cache", endpoint=endpoint, timeout=5)
    assert not any(path.endswith(".safetensors") for _method, path in log), "weights fetched before the check"
    assert not (tmp_path / "out").exists()


def test_download_unknown_repository(fake_hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint, _log = fake_hub({})
    with pytest.raises(CheckpointError, match="repository not found"):
        download("nobody/nothing", tmp_path / "out", cache_dir=tmp_path / "cache", endpoint=endpoint, timeout=5)
