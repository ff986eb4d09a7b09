"""A small CLIP (Radford et al. 2021): a ViT image tower and a causal text transformer whose pooled,
projected outputs meet in one embedding space, with a learned temperature.

    image:  VisionEncoder.embed_images(pixels)        ln_post(CLS) @ proj
    text:   tokens -> embed + positions -> causal blocks -> ln_final(state at the end-of-text token) @ proj
    logits: exp(logit_scale) * normalize(image) @ normalize(text).T   (logit_scale starts at log(1/0.07),
            clamped at log(100) as in the paper)

The text side uses a word-level vocabulary built from the captions it will see (the synthetic suite's
label space enumerates them all), which is all a caption language of a few dozen words needs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..linear import Linear
from .encoder import VisionEncoder
from .vit import Block, init_blocks

SPECIALS = ("<pad>", "<unk>", "<sot>", "<eot>")
MAX_LOGIT_SCALE = math.log(100.0)


class WordTokenizer:
    """Lower-cased words and digits; <sot> words <eot>, padded with <pad> to `context_length`."""

    def __init__(self, words: list[str], context_length: int = 16):
        self.vocab = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+|\d", text.lower())

    @classmethod
    def from_texts(cls, texts, context_length: int = 16) -> "WordTokenizer":
        return cls(sorted({w for t in texts for w in cls.words(t)}), context_length)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B, context_length) ids; a text longer than the context is an error, not silently cut."""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.index["<sot>"], *(self.index.get(w, 1) for w in self.words(text)), self.index["<eot>"]]
            if len(ids) > self.context_length:
                raise ConfigError(f"caption {text!r} is {len(ids)} tokens, longer than the text context "
                                  f"{self.context_length}", hint="raise --context-length")
            out[i, :len(ids)] = torch.tensor(ids)
        return out


@dataclass
class TextConfig:
    vocab_size: int
    context_length: int = 16
    width: int = 64
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64


class TextTower(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.width)
        self.pos_embed = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, 4 * c.width, "gelu", 1e-5, causal=True)
                                    for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.proj = Linear(c.width, c.projection_dim, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        init_blocks(self.blocks, c.width)
        nn.init.normal_(self.proj.weight, std=c.width ** -0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, projection_dim) text embeddings (not normalized)."""
        x = self.embed(ids) + self.pos_embed[:ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        end = (ids != 0).sum(1) - 1          # the <eot> position (padding is id 0, after it)
        return self.proj(self.ln_final(x[torch.arange(ids.shape[0]), end]))


class CLIP(nn.Module):
    def __init__(self, vision: VisionEncoder, text: TextTower):
        super().__init__()
        if vision.config.vit.projection_dim != text.config.projection_dim:
            raise ConfigError(f"the image tower projects to {vision.config.vit.projection_dim} dimensions and "
                              f"the text tower to {text.config.projection_dim}")
        self.vision, self.text = vision, text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision.embed_images(pixels), dim=-1)

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)

    def logits(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * self.image_embeddings(pixels) @ self.text_embeddings(ids).T


def contrastive_loss(logits: torch.Tensor, same_text: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of images over texts and of texts over images, the matching
    pair on the diagonal. `same_text[i, j]` (i != j) marks pairs whose captions are identical: they
    are removed from each other's negatives (a synthetic suite repeats captions; CLIP's web data
    rarely does)."""
    if same_text is not None:
        off_diagonal = same_text & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
