"""OpenFlamingo (arXiv 2308.01390) by injection into a GPT built the normal way.

    apply_flamingo(model, dim_visual=..., media_token_id=..., every=1)

adds, without copying the decoder:

    model.perceiver              PerceiverResampler over the vision encoder's patch features
    blocks.{i}.xattn             GatedCrossAttentionBlock run before decoder layer i, for every i with
                                 (i + 1) % every == 0 (the released `cross_attn_every_n_layers` rule)
    model.flamingo               MediaContext: the media latents and text times of the current call
    embed.rows / lm_head.rows    the rows of the new tokens (`<image>`, `<|endofchunk|>`) when `token_ids`
                                 is given, after growing the vocabulary to `vocab_size` (token_rows.py)

The decoder itself is untouched: each chosen block's forward is rebound to "cross-attend, then the
block's own forward". What the cross-attention sees is set per call through the context:

    media = encode_media(model, features)                 # [B, T_img, n, D] latents, once per batch
    set_media(model, media, input_ids)                    # text times from the <image> tokens
    logits = model(input_ids)

With a KV cache, `set_media(..., images_before=k)` says k images precede this chunk, so decode steps
reuse the same latents (computed once) and every new token attends to the latest image.
The context stays set until the next `set_media` / `clear_media`, so a backward pass that recomputes
checkpointed blocks sees the same media as the forward did. With no media set, every injected block is
the identity and the model is the plain language model.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..vision.perceiver import PerceiverResampler
from .token_rows import grow_vocab, train_token_rows
from .xattn import GatedCrossAttentionBlock, text_time


@dataclass
class MediaContext:
    media: Optional[torch.Tensor] = None      # [B, T_img, n, dim_visual]
    time: Optional[torch.Tensor] = None       # [B, T] text times of the tokens of the current call


class MediaCrossAttention(GatedCrossAttentionBlock):
    """A GatedCrossAttentionBlock that reads its media from the model's shared MediaContext."""

    peft_all = True

    def __init__(self, context: MediaContext, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._context = context     # a plain object, not a submodule: shared by every injected block

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx = self._context
        if ctx.media is None:
            return x
        if ctx.time.shape != x.shape[:2]:
            raise ValueError(f"media were set for {tuple(ctx.time.shape)} tokens, the model got {tuple(x.shape[:2])}")
        return super().forward(x, ctx.media.to(x.dtype), ctx.time)


def _xattn_then_block(self, x, *args, **kwargs):
    # Bound to one Block instance; cross-attention runs before the layer, as in OpenFlamingo.
    return type(self).forward(self, self.xattn(x), *args, **kwargs)


def apply_flamingo(model: nn.Module, dim_visual: int, media_token_id: int, every: int = 1,
                   heads: int = 8, dim_head: int = 64, ff_mult: float = 4, only_attend_immediate_media: bool = True,
                   perceiver_depth: int = 6, perceiver_heads: int = 8, perceiver_dim_head: int = 64,
                   num_latents: int = 64, max_num_media: Optional[int] = None,
                   max_num_frames: Optional[int] = None, vocab_size: Optional[int] = None,
                   token_ids: Sequence[int] = ()) -> dict:
    """Inject the resampler and gated cross-attention blocks in place; returns the resolved options.

    vocab_size: grow the embedding and head to this many rows first (the tokenizer with its new tokens);
    token_ids: rows that train (initialized to the mean of the others), e.g. `<image>` and `<|endofchunk|>`."""
    n_layer = model.config.n_layer
    if hasattr(model, "flamingo"):
        raise ConfigError("Flamingo was already applied to this model")
    mean_of = model.config.vocab_size
    if vocab_size is not None:
        grow_vocab(model, int(vocab_size))
    if not 1 <= every <= n_layer:
        raise ConfigError(f"flamingo cross-attention every {every} layers: must be between 1 and {n_layer} "
                          f"for {model.config.name}")
    if not 0 <= media_token_id < model.config.padded_vocab_size:
        raise ConfigError(f"media token id {media_token_id} is outside the embedding matrix "
                          f"({model.config.padded_vocab_size} rows)", hint="add the tokens with add_media_tokens first")
    if token_ids:
        train_token_rows(model, token_ids, mean_of=mean_of)
    w = model.embed.weight
    kw = dict(device=w.device, dtype=w.dtype)
    context = MediaContext()
    model.flamingo = context
    model.media_token_id = int(media_token_id)
    model.perceiver = PerceiverResampler(dim_visual, perceiver_depth, perceiver_dim_head, perceiver_heads,
                                         num_latents, max_num_media, max_num_frames, ff_mult).to(**kw)
    model.perceiver.peft_all = True
    for i, block in enumerate(model.blocks):
        if (i + 1) % every:
            continue
        block.xattn = MediaCrossAttention(context, model.config.n_embd, dim_visual, dim_head, heads, ff_mult,
                                          only_attend_immediate_media).to(**kw)
        block.forward = types.MethodType(_xattn_then_block, block)
    return {"dim_visual": dim_visual, "media_token_id": int(media_token_id), "every": every, "heads": heads,
            "dim_head": dim_head, "ff_mult": ff_mult, "only_attend_immediate_media": only_attend_immediate_media,
            "perceiver_depth": perceiver_depth, "perceiver_heads": perceiver_heads,
            "perceiver_dim_head": perceiver_dim_head, "num_latents": num_latents,
            "max_num_media": max_num_media, "max_num_frames": max_num_frames, "vocab_size": vocab_size,
            "token_ids": sorted(int(i) for i in token_ids)}


def _require(model: nn.Module) -> MediaContext:
    if not hasattr(model, "flamingo"):
        raise ConfigError("this model has no Flamingo layers", hint="apply the 'flamingo' method first")
    return model.flamingo


def encode_media(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Vision features [B, T_img, (F,) v, D] -> resampled latents [B, T_img, n, D]."""
    _require(model)
    return model.perceiver(features.to(model.embed.weight.dtype))


def set_media(model: nn.Module, media: Optional[torch.Tensor], input_ids: torch.Tensor,
              images_before=None) -> None:
    """Condition the next forward call(s) of `model` on `media` latents for the tokens `input_ids`.

    images_before [B] (or an int): images that precede `input_ids` (in the KV cache); None = 0."""
    ctx = _require(model)
    if media is None:
        clear_media(model)
        return
    if media.dim() != 4 or media.size(0) != input_ids.size(0):
        raise ValueError(f"media latents must be [B={input_ids.size(0)}, T_img, n, D], got {tuple(media.shape)}")
    ctx.media = media
    ctx.time = text_time(input_ids == model.media_token_id, images_before)


def clear_media(model: nn.Module) -> None:
    ctx = _require(model)
    ctx.media = None
    ctx.time = None


def images_in(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[B] number of <image> tokens per row (what a KV cache holding `input_ids` has seen)."""
    return (input_ids == model.media_token_id).sum(-1)
