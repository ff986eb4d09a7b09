"""Flamingo's perceiver resampler (Alayrac et al. 2022; OpenFlamingo, arXiv 2308.01390).

It turns each image's variable number of patch features [v, D] into a fixed set of `num_latents`
latent vectors [n, D], so the language model cross-attends to the same number of tokens per image:

    x        media features [B, T_img, F, v, D]   (T_img images per sequence, F frames each, v patches)
    x        + frame_embs[f]        (learned, per frame; only when max_num_frames is set)
    x        flattened to [B, T_img, F*v, D], + media_time_embs[t] (learned, per image position)
    latents  learned [n, D], one copy per image
    depth x: latents = latents + attn(q = norm_l(latents), kv = [norm_m(x); norm_l(latents)])
             latents = latents + ff(latents)          ff = LayerNorm -> Linear -> GELU -> Linear
    out      LayerNorm(latents)                       [B, T_img, n, D]

The keys and values read both the media and the latents themselves (the paper's "concatenation"
trick). Linear layers have no biases, as in the released code, so `load_open_flamingo` can read an
OpenFlamingo checkpoint's `perceiver.*` tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..linear import Linear

class FeedForward(nn.Module):
    """Pre-norm MLP without biases: proj(gelu(fc(norm(x))))."""

    def __init__(self, dim: int, mult: float = 4):
        super().__init__()
        inner = int(dim * mult)
        self.norm = nn.LayerNorm(dim)
        self.fc = Linear(dim, inner, bias=False)
        self.proj = Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(self.norm(x))))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., N, heads*d] -> [..., heads, N, d]."""
    *lead, n, width = x.shape
    return x.view(*lead, n, heads, width // heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., heads, N, d] -> [..., N, heads*d]."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


class PerceiverAttention(nn.Module):
    """Latents attend to the media features and to themselves."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = Linear(dim, inner, bias=False)
        self.to_kv = Linear(dim, 2 * inner, bias=False)
        self.to_out = Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [B, T, m, D], latents [B, T, n, D] -> update for the latents [B, T, n, D]."""
        B, T, n, _ = latents.shape
        media = self.norm_media(media).flatten(0, 1)           # SDPA's fast kernels want 4-D inputs
        latents = self.norm_latents(latents).flatten(0, 1)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((media, latents), dim=-2)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, split_heads(k, self.heads), split_heads(v, self.heads))
        return self.to_out(merge_heads(out)).view(B, T, n, -1)


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: float):
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Media features [B, T_img, F, v, D] (or [B, T_img, v, D], one frame) -> latents [B, T_img, n, D]."""

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_num_media: Optional[int] = None, max_num_frames: Optional[int] = None, ff_mult: float = 4):
        super().__init__()
        if min(dim, depth, dim_head, heads, num_latents) < 1:
            raise ValueError("perceiver dim, depth, dim_head, heads and num_latents must be positive")
        self.dim = dim
        # N(0, 1) as the released code draws them; nothing downstream sees them at init (gates are 0).
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList(PerceiverLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @property
    def num_latents(self) -> int:
        return self.latents.size(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(2)
        if x.dim() != 5 or x.size(-1) != self.dim:
            raise ValueError(f"media features must be [B, T_img, F, v, {self.dim}] or [B, T_img, v, {self.dim}], "
                             f"got {tuple(x.shape)}")
        B, T, frames, v, D = x.shape
        if self.frame_embs is not None:
            if frames > self.frame_embs.size(0):
                raise ValueError(f"{frames} frames per image, the resampler has embeddings for "
                                 f"{self.frame_embs.size(0)}")
            x = x + self.frame_embs[:frames].view(1, 1, frames, 1, D)
        x = x.reshape(B, T, frames * v, D)
        if self.media_time_embs is not None:
            if T > self.media_time_embs.size(0):
                raise ValueError(f"{T} images per sequence, the resampler has embeddings for "
                                 f"{self.media_time_embs.size(0)}")
            x = x + self.media_time_embs[:T].unsqueeze(0)
        latents = self.latents.to(x.dtype).expand(B, T, -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents)
