"""Nearest-neighbour intent matching over the example utterances of `define user` blocks.

An intent's score is the plain cosine similarity between the message and that intent's closest
example utterance, so a threshold of 0.6 means exactly "some example is at cosine 0.6 or closer".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .embeddings import Embedder


@dataclass
class Match:
    intent: str
    score: float
    example: str


class IntentIndex:
    def __init__(self, embedder: Embedder, examples: dict[str, list[str]], cache_dir: Optional[Path] = None):
        self.embedder = embedder
        self.texts: list[str] = []
        self.labels: list[str] = []
        for intent, utterances in examples.items():
            for text in utterances:
                self.texts.append(text)
                self.labels.append(intent)
        self.intents = list(dict.fromkeys(self.labels))
        label_index = {name: i for i, name in enumerate(self.intents)}
        self._label_ids = torch.tensor([label_index[n] for n in self.labels], dtype=torch.long)
        self.matrix = embedder.embed_cached_to_disk(self.texts, cache_dir) if self.texts else \
            torch.empty((0, embedder.dim))

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, text: str, k: int = 5, vector: Optional[torch.Tensor] = None) -> list[Match]:
        """The k nearest example utterances (any intent), best first."""
        if not self.texts:
            return []
        v = self.embedder.embed_one(text) if vector is None else vector
        sims = self.matrix @ v
        top = torch.topk(sims, min(k, len(self.texts)))
        return [Match(self.labels[i], float(s), self.texts[i]) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def scores(self, text: str) -> dict[str, float]:
        """Every intent's score (max cosine over its examples)."""
        if not self.texts:
            return {}
        sims = self.matrix @ self.embedder.embed_one(text)
        best = torch.full((len(self.intents),), -2.0).scatter_reduce(0, self._label_ids, sims, reduce="amax")
        return dict(zip(self.intents, best.tolist()))

    def best(self, text: str) -> Optional[Match]:
        found = self.search(text, k=1)
        return found[0] if found else None
