"""Flamingo's gated cross-attention from text to media latents, with OpenFlamingo's media masking.

Which media a text token sees is decided by its "text time": the number of `<image>` tokens at or
before it in the sequence (the `<image>` token itself counts, so it already sees its own image).
Image j (1-based) is visible to a token with text time t when

    t == j   only_attend_immediate_media=True (the released default: the most recent image only)
    t >= j   only_attend_immediate_media=False (every image so far)

and a token with t == 0 (before any image) sees none: its cross-attention output is zero, so it
computes exactly what the plain language model computes. (The released code zeroes these rows only
in immediate mode; in all-images mode its fully masked rows fall back to a uniform average over the
media, which lets text before the first image see later images. We zero them in both modes.)

    GatedCrossAttentionBlock:  x = x + tanh(attn_gate) * xattn(x, media)
                               x = x + tanh(ff_gate)   * ff(x)

Both gates start at zero, so a model with these blocks injected equals the language model at
initialization. Names follow the released modules (attn.norm/to_q/to_kv/to_out, attn_gate, ff, ff_gate).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..linear import Linear
from ..vision.perceiver import FeedForward, merge_heads, split_heads


def text_time(media_locations: torch.Tensor, images_before=None) -> torch.Tensor:
    """[B, T] count of media tokens at or before each position, plus `images_before` [B] (images that
    precede this chunk, e.g. already in the KV cache)."""
    time = media_locations.long().cumsum(-1)
    if images_before is not None:
        time = time + torch.as_tensor(images_before, device=time.device).long().view(-1, 1)
    return time


def media_visibility(time: torch.Tensor, n_media: int, n_latents: int, only_immediate: bool) -> torch.Tensor:
    """bool [B, T, n_media * n_latents]: may the token at [b, t] attend to each latent of each image."""
    image = torch.arange(1, n_media + 1, device=time.device).repeat_interleave(n_latents)
    if only_immediate:
        return time.unsqueeze(-1) == image
    return time.unsqueeze(-1) >= image


class MaskedCrossAttention(nn.Module):
    """Text queries [B, T, dim] attend to media latents [B, T_img, n, dim_visual] under the media mask."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = Linear(dim, inner, bias=False)
        self.to_kv = Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = Linear(inner, dim, bias=False)
        self.only_attend_immediate_media = only_attend_immediate_media

    def forward(self, x: torch.Tensor, media: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """x [B, T, dim]; media [B, T_img, n, dim_visual]; time [B, T] from `text_time`."""
        B, n_media, n_latents, _ = media.shape
        if n_media and int(time.max()) > n_media and self.only_attend_immediate_media:
            raise ValueError(f"a sequence has {int(time.max())} <image> tokens but only {n_media} images were given")
        q = split_heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.to_kv(media.reshape(B, n_media * n_latents, -1)).chunk(2, dim=-1)
        k, v = split_heads(k, self.heads), split_heads(v, self.heads)
        visible = media_visibility(time, n_media, n_latents, self.only_attend_immediate_media).unsqueeze(1)
        scores = (q * self.scale) @ k.transpose(-1, -2)
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        # Rows that see no image (before the first one) get no cross-attention at all.
        probs = probs * visible.any(dim=-1, keepdim=True).to(probs.dtype)
        return self.to_out(merge_heads(probs @ v))


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated cross-attention and feed-forward, both gates zero at initialization."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: float = 4,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, media, time) * self.attn_gate.tanh()
        return x + self.ff(x) * self.ff_gate.tanh()
