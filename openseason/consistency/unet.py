"""A small U-Net for small images (8x8 digits, 28x28 Fashion-MNIST, 32x32 folders): the network F
that both the consistency function and the EDM teacher wrap (see `models.py`).

Residual blocks with GroupNorm and SiLU, a sinusoidal embedding of the time input added in every
block, one downsampling per extra level, skip connections by concatenation. No attention: at these
sizes the receptive field already covers the image.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    """The U-Net's shape (saved as data in every run's config.json)."""

    image_size: int = 8
    channels: int = 1
    base: int = 32            # channels at full resolution
    mults: tuple = (1, 2)     # channel multiplier per level; len(mults) - 1 downsamplings
    time_dim: int = 64
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mults": list(self.mults)}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{**d, "mults": tuple(d["mults"])})


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a [B] time input (the transformer / DDPM one)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """F(x, t): [B, C, H, W] and [B] time inputs -> [B, C, H, W]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        levels = len(config.mults)
        if config.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image size {config.image_size} is not divisible by 2^{levels - 1}")
        td = config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        chans = [config.base * m for m in config.mults]
        self.stem = nn.Conv2d(config.channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(ResBlock(prev, ch, td, config.dropout))
            prev = ch
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(prev, prev, td, config.dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            ch = chans[i]
            self.up.append(ResBlock(prev + ch, ch, td, config.dropout))
            prev = ch
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, chans[i - 1], 3, padding=1))
                prev = chans[i - 1]
        self.out = nn.Sequential(_norm(prev), nn.SiLU(), nn.Conv2d(prev, config.channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
