"""The `kb/` folder of a rails config: markdown documents chunked and indexed with the same embeddings
as the intents, retrieved into `$relevant_chunks` for bot generation and the fact-checking rail
(as NeMo Guardrails' knowledge base does).

Chunks follow the markdown structure: each heading starts a chunk that keeps its heading path as a
title ("Returns > Refunds"), and a section longer than MAX_CHUNK_CHARS is cut at paragraph breaks.
Bounded: at most MAX_DOCUMENT_BYTES per file and MAX_CHUNKS in all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .embeddings import Embedder

MAX_CHUNK_CHARS = 1200
MAX_DOCUMENT_BYTES = 2 * 2**20
MAX_CHUNKS = 20_000


@dataclass
class Chunk:
    title: str
    text: str
    source: str

    def render(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


def chunk_markdown(text: str, source: str = "") -> list[Chunk]:
    chunks: list[Chunk] = []
    path: list[str] = []
    body: list[str] = []

    def flush():
        section = "\n".join(body).strip()
        body.clear()
        if not section:
            return
        title = " > ".join(path)
        piece = ""
        for para in re.split(r"\n\s*\n", section):
            if piece and len(piece) + len(para) > MAX_CHUNK_CHARS:
                chunks.append(Chunk(title, piece.strip(), source))
                piece = ""
            piece += para + "\n\n"
        if piece.strip():
            chunks.append(Chunk(title, piece.strip(), source))

    for line in text.splitlines():
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            flush()
            level = len(m.group(1))
            path[:] = path[:level - 1] + [m.group(2).strip()]
        else:
            body.append(line)
    flush()
    return chunks


class KnowledgeBase:
    def __init__(self, chunks: list[Chunk], embedder: Embedder):
        self.chunks = chunks
        self.embedder = embedder
        self.matrix = embedder.embed([c.render() for c in chunks]) if chunks else torch.empty((0, embedder.dim))

    @classmethod
    def from_folder(cls, folder: Path, embedder: Embedder) -> "KnowledgeBase":
        chunks: list[Chunk] = []
        for file in sorted(folder.rglob("*.md")):
            if file.stat().st_size > MAX_DOCUMENT_BYTES:
                raise ConfigError(f"knowledge-base file is larger than {MAX_DOCUMENT_BYTES} bytes", where=str(file),
                                  hint="split it into several markdown files")
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(file)) from None
            chunks.extend(chunk_markdown(text, str(file.relative_to(folder))))
            if len(chunks) > MAX_CHUNKS:
                raise ConfigError(f"the knowledge base has more than {MAX_CHUNKS} chunks", where=str(folder))
        return cls(chunks, embedder)

    def search(self, query: str, k: int = 3) -> list[tuple[Chunk, float]]:
        if not self.chunks or not query.strip():
            return []
        sims = self.matrix @ self.embedder.embed_one(query)
        top = torch.topk(sims, min(k, len(self.chunks)))
        return [(self.chunks[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def relevant_chunks(self, query: str, k: int = 3) -> str:
        return "\n\n".join(c.render() for c, _s in self.search(query, k))
