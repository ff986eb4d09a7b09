"""A stand-in image encoder for decoder-side tests: one patch convolution, (B, 3, H, W) -> (B, N, D).

It only has the interface the multimodal methods rely on (hidden_size, image_size, num_tokens); the
real towers (openseason.vision) are tested against transformers in tests/vision."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from openseason.peft.media import VisionTower


class PatchEncoder(nn.Module):
    def __init__(self, image_size: int = 16, patch: int = 8, hidden_size: int = 24):
        super().__init__()
        self.image_size, self.hidden_size = image_size, hidden_size
        self.num_tokens = (image_size // patch) ** 2
        self.conv = nn.Conv2d(3, hidden_size, patch, stride=patch)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv(pixel_values).flatten(2).transpose(1, 2)


def to_pixels(image, size: int = 16) -> torch.Tensor:
    image = image.convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def stub_tower(image_size: int = 16, patch: int = 8, hidden_size: int = 24, seed: int = 0) -> VisionTower:
    torch.manual_seed(seed)
    return VisionTower(PatchEncoder(image_size, patch, hidden_size), lambda im: to_pixels(im, image_size))
