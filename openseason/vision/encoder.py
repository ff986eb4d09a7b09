"""`VisionEncoder`: the one interface every multimodal method codes against.

    encoder = load_vision_encoder("CKPT")           # or VisionEncoder(VisionConfig.named(...))
    pixels = encoder.preprocess([image, ...])       # paths, bytes or PIL images -> (B, 3, S, S)
    features = encoder(pixels)                      # (B, encoder.num_tokens, encoder.hidden_size)
    encoder.image_size, encoder.hidden_size, encoder.num_tokens, encoder.config

It is a ViT (CLIP or EVA flavour) with an optional BLIP-2 Q-Former on top; `config` says which
features come out (see VisionConfig). `encoder.freeze()` turns off gradients and dropout, as
MiniGPT-4, LLaMA-Adapter V2 and OpenFlamingo keep their vision towers.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import VisionConfig
from .images import ImageLike, preprocess
from .qformer import QFormer
from .vit import ViT


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vit = ViT(config.vit)
        self.qformer = QFormer(config.qformer) if config.qformer else None

    @property
    def image_size(self) -> int:
        return self.config.vit.image_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> normalized pixels (B, 3, image_size, image_size) as this encoder was trained on."""
        return preprocess(images, self.config.processor)

    def vit_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's token features as `config` selects them (before any Q-Former)."""
        c = self.config
        x = self.vit.hidden_states(pixel_values, c.feature_layer)
        if c.output_norm:
            x = self.vit.ln_post(x)
        if c.tokens == "patch":
            return x[:, 1:]
        if c.tokens == "cls":
            return x[:, :1]
        return x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, num_tokens, hidden_size) features."""
        x = self.vit_features(pixel_values)
        return self.qformer(x) if self.qformer is not None else x

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP's joint-space image embedding (not normalized): ln_post(CLS) through the projection."""
        return self.vit.pooled(pixel_values)

    def freeze(self) -> "VisionEncoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def encode(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> features in one call, without gradients, on the encoder's device and dtype."""
        param = next(self.parameters())
        with torch.no_grad():
            return self(self.preprocess(images).to(param.device, param.dtype))
