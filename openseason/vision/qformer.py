"""BLIP-2's Querying Transformer (Li et al. 2023), the image half only (what MiniGPT-4 uses).

    queries (1, Q, H) -> LayerNorm -> layers -> (B, Q, H)
    layer: x = LN(x + self_attn(x))                          BERT-style post-norm
           x = LN(x + cross_attn(x, image)) every `cross_attention_frequency` layers (0, f, 2f, ...)
           x = LN(x + fc2(act(fc1(x))))                     the query feed-forward

The text branch of the Q-Former (BERT embeddings, the text feed-forward) is used only in BLIP-2's
pre-training and never for image features, so it is not built.
"""
from __future__ import annotations

import torch
from torch import nn

from ..linear import Linear
from .config import QFormerConfig
from .vit import activation, attend


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections and a post-norm residual."""

    def __init__(self, dim: int, heads: int, kv_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q = Linear(dim, dim)
        self.k = Linear(kv_dim, dim)
        self.v = Linear(kv_dim, dim)
        self.o = Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.heads
        q = self.q(x).view(b, t, self.heads, hd).transpose(1, 2)
        k = self.k(context).view(b, context.shape[1], self.heads, hd).transpose(1, 2)
        v = self.v(context).view(b, context.shape[1], self.heads, hd).transpose(1, 2)
        return self.norm(x + self.o(attend(q, k, v)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, eps: float):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.act = activation(act)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


class QFormerLayer(nn.Module):
    def __init__(self, c: QFormerConfig, cross: bool):
        super().__init__()
        self.self_attn = Attention(c.hidden_size, c.num_heads, c.hidden_size, c.layer_norm_eps)
        self.cross_attn = Attention(c.hidden_size, c.num_heads, c.encoder_hidden_size, c.layer_norm_eps) if cross else None
        self.ffn = FeedForward(c.hidden_size, c.intermediate_size, c.activation, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.self_attn(x, x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, image)
        return self.ffn(x)


class QFormer(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        c = self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(1, c.num_query_tokens, c.hidden_size))
        self.ln_in = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(QFormerLayer(c, cross=i % c.cross_attention_frequency == 0)
                                    for i in range(c.num_layers))
        nn.init.normal_(self.query_tokens, std=0.02)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, N, encoder_hidden_size) image features -> (B, num_query_tokens, hidden_size)."""
        # transformers keeps the Q-Former in float32 whatever the ViT's dtype; so do we
        dtype = self.ln_in.weight.dtype
        image = image_features.to(dtype)
        x = self.ln_in(self.query_tokens.expand(image.shape[0], -1, -1))
        for layer in self.layers:
            x = layer(x, image)
        return x.to(image_features.dtype)
