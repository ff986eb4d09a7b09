"""OpenFlamingo (arXiv 2308.01390) by injection into a GPT built the normal way.

    apply_flamingo(model, vision=ENCODER_CKPT, media_token_id=..., every=1)     # or dim_visual=D

adds, without copying the decoder:

    model.perceiver              PerceiverResampler over the vision encoder's patch features
    blocks.{i}.xattn             GatedCrossAttentionBlock run before decoder layer i, for every i with
                                 (i + 1) % every == 0 (the released `cross_attn_every_n_layers` rule)
    model.media                  with `vision`: the front-end (flamingo_media.py) that training, LLM,
                                 chat and serve use, holding the frozen vision tower
    embed.rows / lm_head.rows    the rows of the new tokens (`<image>`, `<|endofchunk|>`) when `token_ids`
                                 is given, after growing the vocabulary to `vocab_size` (token_rows.py)

The decoder itself is untouched: each chosen block's forward is rebound to "cross-attend, then the
block's own forward", and `model.hidden_states` is rebound to read the media from the decoder's
per-row `extras` first:

    extras = media_extras(model, encode_media(model, features), input_ids)   # latents computed once
    logits = model(input_ids, extras=extras)

    extras["flamingo_media"]   [B, T_img, n, D] resampled latents
    extras["flamingo_time"]    [B, T] each token's text time (xattn.py): images at or before it

With a KV cache the extras are stored with the rows at prefill (model.py); once the prompt is in the
cache they are compacted to what later tokens need: every image precedes a generated token, so its
text time is the row's image count, and in immediate mode only the last image's latents are kept.
Decode steps reuse those latents; nothing about the images is computed again.

The latents and times of the current call are kept in `model.flamingo` (a MediaContext) until the
next call, so a backward pass that recomputes checkpointed blocks sees what the forward saw.
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

MEDIA, TIME = "flamingo_media", "flamingo_time"


@dataclass
class MediaContext:
    media: Optional[torch.Tensor] = None      # [B, T_img, n, dim_visual]
    time: Optional[torch.Tensor] = None       # [B, T] text times of the tokens of the current call
    immediate: bool = True                    # only_attend_immediate_media of the blocks


class MediaCrossAttention(GatedCrossAttentionBlock):
    """A GatedCrossAttentionBlock that reads its media from the model's shared MediaContext. With no
    media in the call (text only) the attention term is absent; the gated feed-forward still applies,
    as it does in the released model to text before any image."""

    peft_all = True

    def __init__(self, context: MediaContext, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._context = context     # a plain object, not a submodule: shared by every injected block

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx = self._context
        if ctx.media is None:
            return x + self.ff(x) * self.ff_gate.tanh()
        if ctx.time.shape != x.shape[:2]:
            raise ValueError(f"media were set for {tuple(ctx.time.shape)} tokens, the model got {tuple(x.shape[:2])}")
        return super().forward(x, ctx.media.to(x.dtype), ctx.time)


def _xattn_then_block(self, x, *args, **kwargs):
    # Bound to one Block instance; cross-attention runs before the layer, as in OpenFlamingo.
    return type(self).forward(self, self.xattn(x), *args, **kwargs)


def _hidden_states_with_media(self, input_ids, *, kv_cache=None, extras=None, **kwargs):
    # Bound to the GPT instance: set the media context for this call, then the model's own method.
    ctx = self.flamingo
    source = extras if extras else (kv_cache.extras if kv_cache is not None else None)
    ctx.media = ctx.time = None
    if source and MEDIA in source:
        past = kv_cache.length if kv_cache is not None else 0
        embeds = kwargs.get("inputs_embeds")
        T = (input_ids if input_ids is not None else embeds).shape[1]
        time = source[TIME]
        # prompt tokens read their own times; later tokens come after every image of the prompt
        ctx.time = time[:, past:past + T] if time.size(1) >= past + T else time[:, -1:].expand(-1, T)
        ctx.media = source[MEDIA]
    hidden = type(self).hidden_states(self, input_ids, kv_cache=kv_cache, extras=extras, **kwargs)
    if kv_cache is not None and TIME in kv_cache.extras and kv_cache.extras[TIME].size(1) > 1 \
            and kv_cache.length >= kv_cache.extras[TIME].size(1):
        _compact(kv_cache.extras, ctx.immediate)
    return hidden


def _compact(extras: dict, immediate: bool) -> None:
    """After the prompt: the extras later tokens need, in shapes that stack across requests."""
    last = extras[TIME][:, -1]                                   # images in each row's prompt
    media = extras[MEDIA]
    if immediate:   # only the latest image is ever seen again
        index = (last - 1).clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, *media.shape[2:])
        extras[MEDIA] = media.gather(1, index)
        extras[TIME] = (last > 0).long().view(-1, 1)
    else:
        extras[TIME] = last.view(-1, 1)


def apply_flamingo(model: nn.Module, media_token_id: int, vision=None, vision_fingerprint: Optional[str] = None,
                   dim_visual: Optional[int] = None, every: int = 1, heads: int = 8, dim_head: int = 64,
                   ff_mult: float = 4, only_attend_immediate_media: bool = True, perceiver_depth: int = 6,
                   perceiver_heads: int = 8, perceiver_dim_head: int = 64, num_latents: int = 64,
                   max_num_media: Optional[int] = None, max_num_frames: Optional[int] = None,
                   max_images: Optional[int] = None, vocab_size: Optional[int] = None,
                   token_ids: Sequence[int] = (), new_token_ids: Optional[Sequence[int]] = None) -> dict:
    """Inject the resampler and gated cross-attention blocks in place; returns the resolved options.

    vision: a vision checkpoint directory (or a peft.media.VisionTower): the frozen encoder whose
        features the resampler reads, attached as `model.media`; dim_visual is then its width. Without
        it, give dim_visual and pass features yourself (encode_media / media_extras).
    vocab_size: grow the embedding and head to this many rows first (the tokenizer with its new tokens);
    token_ids: rows that train, e.g. `<image>` and `<|endofchunk|>`; those in new_token_ids (default: all)
        start at the mean of the other rows, the rest (tokens the base already knew) keep theirs."""
    n_layer = model.config.n_layer
    if hasattr(model, "flamingo"):
        raise ConfigError("Flamingo was already applied to this model")
    if getattr(model, "media", None) is not None:
        raise ConfigError("the model already has a multimodal front-end (model.media)")
    if vision is not None and not only_attend_immediate_media and max_images is None:
        # every image stays with its row in the KV cache; rows of a batch need one shape to stack
        raise ConfigError("attending to all previous images needs max_images with a vision encoder")
    if vision is None and max_images is not None:
        raise ConfigError("max_images applies to a model with a vision encoder (vision=...)")
    tower = None
    if vision is not None:
        from .media import check_fingerprint, load_tower

        tower = load_tower(vision)
        check_fingerprint(tower, vision_fingerprint, where=f"vision encoder {tower.source}")
        if dim_visual is not None and dim_visual != tower.hidden_size:
            raise ConfigError(f"dim_visual {dim_visual} differs from the vision encoder's width {tower.hidden_size}")
        dim_visual = tower.hidden_size
    if dim_visual is None:
        raise ConfigError("flamingo needs a vision encoder (vision=ENCODER_CKPT) or dim_visual")
    if not 1 <= every <= n_layer:
        raise ConfigError(f"flamingo cross-attention every {every} layers: must be between 1 and {n_layer} "
                          f"for {model.config.name}")
    mean_of = model.config.vocab_size
    if vocab_size is not None:
        grow_vocab(model, int(vocab_size))
    if not 0 <= media_token_id < model.config.padded_vocab_size:
        raise ConfigError(f"media token id {media_token_id} is outside the embedding matrix "
                          f"({model.config.padded_vocab_size} rows)", hint="add the tokens with add_media_tokens first")
    if token_ids:
        train_token_rows(model, token_ids, mean_of=mean_of, new_ids=new_token_ids)
    w = model.embed.weight
    kw = dict(device=w.device, dtype=w.dtype)
    context = MediaContext(immediate=only_attend_immediate_media)
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
    model.hidden_states = types.MethodType(_hidden_states_with_media, model)
    resolved = {"media_token_id": int(media_token_id), "dim_visual": dim_visual, "every": every, "heads": heads,
                "dim_head": dim_head, "ff_mult": ff_mult, "only_attend_immediate_media": only_attend_immediate_media,
                "perceiver_depth": perceiver_depth, "perceiver_heads": perceiver_heads,
                "perceiver_dim_head": perceiver_dim_head, "num_latents": num_latents,
                "max_num_media": max_num_media, "max_num_frames": max_num_frames, "max_images": max_images,
                "vocab_size": vocab_size, "token_ids": sorted(int(i) for i in token_ids)}
    if tower is not None:
        from .flamingo_media import FlamingoMedia

        from .media import tower_options

        model.media = FlamingoMedia(tower, max_images)
        resolved.update(tower_options(tower))
    return resolved


def _require(model: nn.Module) -> MediaContext:
    if not hasattr(model, "flamingo"):
        raise ConfigError("this model has no Flamingo layers", hint="apply the 'flamingo' method first")
    return model.flamingo


def encode_media(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Vision features [B, T_img, (F,) v, D] -> resampled latents [B, T_img, n, D]."""
    _require(model)
    return model.perceiver(features.to(model.embed.weight.dtype))


def media_extras(model: nn.Module, media: torch.Tensor, input_ids: torch.Tensor, images_before=None) -> dict:
    """The decoder `extras` that condition `input_ids` [B, T] on `media` latents [B, T_img, n, D]; text
    times come from the `<image>` tokens of input_ids (plus `images_before` [B] or an int)."""
    _require(model)
    if media.dim() != 4 or media.size(0) != input_ids.size(0):
        raise ValueError(f"media latents must be [B={input_ids.size(0)}, T_img, n, D], got {tuple(media.shape)}")
    return {MEDIA: media, TIME: text_time(input_ids == model.media_token_id, images_before)}
