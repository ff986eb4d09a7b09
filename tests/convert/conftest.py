"""Fixtures for the conversion tests: tiny random transformers models saved the ways the Hub has them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")


def _save(model, directory: Path, tokenizer=None, **save_kwargs) -> Path:
    model.eval()
    model.save_pretrained(directory, **save_kwargs)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


@pytest.fixture
def make_neox(tmp_path):
    """make_neox(name, **GPTNeoXConfig kwargs) -> (hf model, saved directory)."""
    def make(name="neox", tokenizer=None, save_kwargs=None, **overrides):
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        settings = dict(vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=80, max_position_embeddings=64, rotary_pct=0.25,
                        use_parallel_residual=True, bos_token_id=0, eos_token_id=0)
        settings.update(overrides)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**settings))
        _randomize_norms(model)
        return model.eval(), _save(model, tmp_path / name, tokenizer, **(save_kwargs or {}))
    return make


@pytest.fixture
def make_llama(tmp_path):
    """make_llama(name, **LlamaConfig kwargs) -> (hf model, saved directory)."""
    def make(name="llama", tokenizer=None, save_kwargs=None, **overrides):
        from transformers import LlamaConfig, LlamaForCausalLM

        settings = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
        settings.update(overrides)
        model = LlamaForCausalLM(LlamaConfig(**settings))
        _randomize_norms(model)
        return model.eval(), _save(model, tmp_path / name, tokenizer, **(save_kwargs or {}))
    return make


def _randomize_norms(model) -> None:
    """Norm weights start at ones and biases at zeros; random values catch a swapped norm_1/norm_2."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
            elif name.endswith(".bias"):
                param.copy_(torch.randn_like(param) * 0.05)


def to_bin(directory: Path, shards: int = 1, extra: dict | None = None, state: dict | None = None) -> None:
    """Rewrite a saved model as pytorch_model*.bin (what transformers 4 wrote by default), optionally
    sharded with an index, with extra tensors (stale buffers old versions saved), or with `state`
    (e.g. a model's state_dict, whose names can differ from the saved file's) instead of the file's."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    loaded = {}
    for f in files:
        loaded.update(load_file(str(f)))
        f.unlink()
    state = dict(loaded if state is None else state)
    (directory / "model.safetensors.index.json").unlink(missing_ok=True)
    state.update(extra or {})
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, directory / name)
        weight_map.update({k: name for k in part})
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture
def bin_writer():
    return to_bin


@pytest.fixture
def fake_hub():
    """A loopback HTTP server speaking the few Hub endpoints huggingface_hub uses to download a model
    (model info, file tree, resolve). fake_hub(repos={"owner/name": directory}) -> (endpoint, request log)."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def start(repos: dict[str, Path], sha: str = "0123456789abcdef0123456789abcdef01234567"):
        log: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _repo(self, path):
                for repo_id, directory in repos.items():
                    if path.startswith(repo_id + "/") or path == repo_id:
                        return repo_id, directory, path[len(repo_id):].lstrip("/")
                return None, None, None

            def _json(self, obj):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _resolve(self, head):
                repo_id, directory, rest = self._repo(self.path.lstrip("/"))
                if repo_id is None:
                    return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)
                name = rest.split("/", 2)[-1]  # resolve/<revision>/<name>
                file = directory / name
                if not file.is_file():
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                data = file.read_bytes()
                self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)

            def do_HEAD(self):
                log.append(("HEAD", self.path))
                self._resolve(head=True)

            def do_GET(self):
                log.append(("GET", self.path))
                if not self.path.startswith("/api/models/"):
                    return self._resolve(head=False)
                repo_id, directory, rest = self._repo(self.path[len("/api/models/"):].split("?")[0])
                if repo_id is None:
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                files = sorted(p for p in directory.iterdir() if p.is_file())
                if rest.startswith("tree/"):
                    return self._json([{"type": "file", "path": p.name, "size": p.stat().st_size,
                                        "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files])
                return self._json({"id": repo_id, "modelId": repo_id, "sha": sha,
                                   "siblings": [{"rfilename": p.name} for p in files]})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
