"""MiniGPT-4 (Zhu et al., arXiv 2304.10592): a frozen image encoder, one trainable linear projection,
any frozen openseason decoder.

    image -> frozen encoder (BLIP-2: EVA ViT + Q-Former, 32 query outputs) -> Linear -> N visual tokens

The visual tokens are written over the placeholder run of the prompt, `###Human: <Img><ImageHere></Img>
question ###Assistant:` (prompt style "minigpt4"), exactly where the N placeholder positions are, so
positions, the KV cache and batching need nothing special. Only `media.proj` trains; the loss is on the
answer tokens (the prompt style marks only the assistant reply as trained).

This is also the forward of `transformers.Blip2ForConditionalGeneration`: its `language_projection`
is our `proj`, and it writes the projected query outputs over the image-token positions of input_ids
(tests/peft/test_minigpt4.py checks the whole forward against it).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..linear import Linear
from .media import VisionTower, check_fingerprint, embed_with_images, load_tower, tower_options


class MiniGPT4Media(nn.Module):
    """model.media for MiniGPT-4: the frozen tower and the trainable projection `proj`."""

    max_images: Optional[int] = None

    def __init__(self, tower: VisionTower, n_embd: int):
        super().__init__()
        self.tower = tower
        weight = next(tower.parameters())
        self.proj = Linear(tower.hidden_size, n_embd, device=weight.device)
        self.proj.peft_params = ("weight", "bias")
        self.proj.peft_group = "visual"
        self.image_tokens = tower.num_tokens

    def preprocess(self, image) -> torch.Tensor:
        return self.tower.preprocess(image)

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[M, N, n_embd]: the projected encoder features of M images."""
        features = self.tower(pixel_values)
        return self.proj(features.to(self.proj.weight.dtype))

    def inputs(self, model, input_ids, pixel_values, image_rows, image_starts):
        if pixel_values is None or pixel_values.shape[0] == 0:
            return None, None
        tokens = self.visual_tokens(pixel_values)
        return embed_with_images(model, input_ids, tokens, image_rows, image_starts), None


def apply_minigpt4(model: nn.Module, vision=None, vision_fingerprint: Optional[str] = None) -> dict:
    """Attach MiniGPT-4's front-end to `model` in place; returns the options to record (the encoder's
    checkpoint and fingerprint). `vision` is a vision checkpoint directory or a VisionTower."""
    if getattr(model, "media", None) is not None:
        raise ConfigError("the model already has a multimodal front-end (model.media)")
    tower = load_tower(vision)
    check_fingerprint(tower, vision_fingerprint, where=f"vision encoder {tower.source}")
    model.media = MiniGPT4Media(tower, model.config.n_embd)
    return tower_options(tower)
