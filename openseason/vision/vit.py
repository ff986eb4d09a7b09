"""The Vision Transformer (Dosovitskiy et al. 2021) as CLIP and EVA/BLIP-2 build it, one class for both.

    pixels (B,3,H,W) -> patch conv -> [CLS; patches] + positions -> [ln_pre] -> blocks -> hidden states
    block:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))            (pre-norm, bidirectional)
    pooled: ln_post(CLS) [-> proj]                                     (CLIP's image embedding)

Attention uses one fused qkv projection for both towers (CLIP's separate q/k/v weights are
concatenated at conversion; EVA's k has no bias, kept as zeros in the fused bias exactly as
transformers' Blip2Attention does).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..linear import Linear
from .config import ViTConfig


def activation(name: str):
    if name == "quick_gelu":   # OpenAI CLIP: x * sigmoid(1.702 x)
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, causal: bool = False) -> torch.Tensor:
    """(B, heads, T, hd) attention; returns (B, T, heads*hd)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool = True, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = Linear(dim, 3 * dim, bias=bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attend(q, k, v, mask, self.causal and mask is None))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block (the ViT's, and the CLIP text tower's with `causal`)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, act: str, eps: float, qkv_bias: bool = True,
                 causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, bias=qkv_bias, causal=causal)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden, act)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def init_blocks(blocks, dim: int) -> None:
    """CLIP's initialization of a block stack (scaled normals; deeper stacks get smaller outputs)."""
    std, out_std = dim ** -0.5, dim ** -0.5 / math.sqrt(2 * len(blocks))
    for block in blocks:
        nn.init.normal_(block.attn.qkv.weight, std=std)
        nn.init.normal_(block.attn.proj.weight, std=out_std)
        nn.init.normal_(block.mlp.fc1.weight, std=(2 * dim) ** -0.5)
        nn.init.normal_(block.mlp.fc2.weight, std=out_std)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.patch_embed = nn.Conv2d(3, c.hidden_size, c.patch_size, c.patch_size, bias=c.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(c.num_patches + 1, c.hidden_size))
        self.ln_pre = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps) if c.pre_norm else None
        self.blocks = nn.ModuleList(Block(c.hidden_size, c.num_heads, c.intermediate_size, c.activation,
                                          c.layer_norm_eps, c.qkv_bias) for _ in range(c.num_layers))
        self.ln_post = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.proj = Linear(c.hidden_size, c.projection_dim, bias=False) if c.projection_dim else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialization (scaled normals), for training from scratch."""
        d = self.config.hidden_size
        nn.init.normal_(self.class_embedding, std=d ** -0.5)
        nn.init.normal_(self.pos_embed, std=0.01)
        init_blocks(self.blocks, d)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=d ** -0.5)

    def hidden_states(self, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Output of block `layer` (-1 = last; blocks after it are not run): (B, 1 + patches, D)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected pixel_values (B, 3, H, W), got {tuple(pixel_values.shape)}")
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"this ViT takes {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(dtype)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        for block in self.blocks[:len(self.blocks) + 1 + layer]:
            x = block(x)
        return x

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding: ln_post of the last CLS state, through `proj` when there is one."""
        x = self.ln_post(self.hidden_states(pixel_values)[:, 0])
        return self.proj(x) if self.proj is not None else x
