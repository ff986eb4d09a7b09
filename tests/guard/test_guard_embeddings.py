"""Our MiniLM encoder against the real pipelines: sentence-transformers and transformers' AutoModel."""
from __future__ import annotations

import os

import pytest
import torch

from openseason.errors import ConfigError
from openseason.guard.embeddings import Embedder, default_model_dir, resolve_model_dir
from openseason.guard.index import IntentIndex

TEXTS = ["Hello there!", "where is my package? it was due last Tuesday and the tracking page is empty",
         "a", "Ünïcödé and emojis 🙂 are fine", "x " * 400]  # the last one is truncated at 256 tokens


def test_packaged_model_is_found_offline():
    d = default_model_dir()
    assert (d / "model.safetensors").exists() and (d / "tokenizer.json").exists()
    assert resolve_model_dir("all-MiniLM-L6-v2") == d == resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="neither all-MiniLM-L6-v2 nor a directory"):
        resolve_model_dir("no-such-model")


def test_matches_sentence_transformers(embedder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(default_model_dir()), device="cpu")
    expected = torch.tensor(reference.encode(TEXTS, normalize_embeddings=False))
    ours = embedder.embed(TEXTS)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)


def test_matches_transformers_automodel(embedder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    d = str(default_model_dir())
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(embedder.embed(TEXTS), expected, atol=1e-5)


def test_single_and_batched_agree_and_cache(embedder):
    one = embedder.embed_one(TEXTS[1])
    assert TEXTS[1] in embedder._cache
    assert torch.allclose(one, embedder.embed(TEXTS)[1], atol=1e-6)


def test_disk_cache_roundtrip(embedder, tmp_path):
    texts = ["refund please", "where is my order"]
    first = embedder.embed_cached_to_disk(texts, tmp_path)
    files = list(tmp_path.glob("utterances-*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(b"corrupt")  # a broken cache is rebuilt, not trusted
    again = embedder.embed_cached_to_disk(texts, tmp_path)
    assert torch.allclose(first, again)
    assert torch.allclose(embedder.embed_cached_to_disk(texts, tmp_path), first)


def test_index_scores_are_plain_cosine(embedder):
    index = IntentIndex(embedder, {"greet": ["hello", "hi there"], "refund": ["I want my money back"]})
    query = "hey, hello!"
    v = embedder.embed_one(query)
    expected = max(float(v @ embedder.embed_one(t)) for t in ["hello", "hi there"])
    assert index.scores(query)["greet"] == pytest.approx(expected, abs=1e-6)
    top = index.search(query, k=3)
    assert [m.intent for m in top][0] == "greet" and top[0].score == pytest.approx(expected, abs=1e-6)
    assert top[0].score >= top[1].score >= top[2].score


def test_bad_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="needs config.json and tokenizer.json"):
        Embedder(tmp_path)
