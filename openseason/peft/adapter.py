"""LLaMA-Adapter v1 (Zhang et al., arXiv 2303.16199) and v2 (Gao et al., arXiv 2304.15010).

v1, per adapted layer (the top L layers; default all but the first two):

    prompt P            [K, n_embd] learnable (K = prompt_length, default 10)
    keys, values        the layer's own frozen k and v projections of P (the k and v row blocks of the
                        fused qkv, biases included, clamped when clip_qkv is set), with NO rotary
                        embedding and, in ALiBi models (MPT), NO positional bias: the prompt has no
                        position, and the ALiBi bias rides on the ordinary attention's mask only
    out = attend(q, k, v) + tanh(gate) * softmax(q P_k^T / sqrt(hs)) P_v

The prompt scores get their own softmax and the gate is zero-initialized per head, so the adapted
model equals the base model at initialization. The prompt term is added to the attention output
before the output projection; with grouped-query attention each prompt key/value head serves its
group of query heads. Prompt keys do not depend on the input, so decoding with the KV cache needs
nothing extra.

v2 adds, on top of v1: a learnable bias (init 0) and scale (init 1) on the output of every linear
layer including the output head (y = scale * (W x + b + bias)), and trains the normalization layers.
"""
from __future__ import annotations

import math
import types
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .base import adapt_linear, declare, linear_modules


class AdapterPrompt(nn.Module):
    """The learnable prompt and per-head gate of one adapted attention layer."""

    peft_all = True

    def __init__(self, prompt_length: int, n_embd: int, n_head: int, device=None, dtype=None):
        super().__init__()
        # N(0, 1) like the official code's nn.Embedding; the zero gate hides it at initialization.
        self.prompt = nn.Parameter(torch.randn(prompt_length, n_embd, device=device, dtype=dtype))
        self.gate = nn.Parameter(torch.zeros(1, n_head, 1, 1, device=device, dtype=dtype))

    def forward(self, q: torch.Tensor, attn: nn.Module, extras: Optional[dict] = None) -> torch.Tensor:
        """Gated attention of queries q [B, nh, T, hs] (already rotated) over the prompt. A per-row
        "adapter_prompt_add" [B, K, n_embd] in `extras` (LLaMA-Adapter V2 multimodal's visual query)
        is added to the prompt first."""
        prompt = self.prompt.unsqueeze(0)
        add = extras.get("adapter_prompt_add") if extras else None
        if add is not None:
            prompt = prompt + add.to(prompt.dtype)
        return gated_prompt_attention(q, attn, prompt, self.gate)


def gated_prompt_attention(q: torch.Tensor, attn: nn.Module, prompt: torch.Tensor, gate: torch.Tensor,
                           present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """tanh(gate) * softmax(q P_k^T / sqrt(hs)) P_v for prompt tokens P [1 or B, K, n_embd] whose keys and
    values are the layer's own frozen k and v projections (no positions); `present` [B] zeroes the
    term for rows that have no prompt. The zero-initialized attention of LLaMA-Adapter."""
    cfg = attn.config
    if not torch.is_autocast_enabled():
        prompt = prompt.to(q.dtype)
    _, pk, pv = attn.split_qkv(attn.qkv(prompt))                     # [1|B, ng, K, hs]
    if cfg.n_query_groups != cfg.n_head:
        repeat = cfg.n_head // cfg.n_query_groups
        pk = pk.repeat_interleave(repeat, dim=1)
        pv = pv.repeat_interleave(repeat, dim=1)
    scores = (q @ pk.transpose(-1, -2).to(q.dtype)) / math.sqrt(cfg.head_size)
    probs = F.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.tanh(gate).to(q.dtype) * (probs @ pv.to(q.dtype))
    if present is not None:
        out = out * present.to(q.dtype).view(-1, 1, 1, 1)
    return out


def _adapted_attend(self, q, k, v, mask, extras=None):
    # Bound to one CausalSelfAttention instance; the class's own attend does the ordinary part, then
    # every injected prompt adds its gated term (the adapter prompt, a multimodal early visual prompt).
    out = type(self).attend(self, q, k, v, mask)
    for name in ("adapter", "visual_adapter"):
        module = getattr(self, name, None)
        if module is not None:
            out = out + module(q, self, extras)
    return out


def default_adapter_layers(n_layer: int) -> int:
    return n_layer - 2 if n_layer > 2 else n_layer


def apply_adapter(model: nn.Module, prompt_length: int = 10, layers: Optional[int] = None) -> dict:
    """LLaMA-Adapter v1 in place: prompts in the top `layers` layers. Returns the resolved options."""
    n_layer = model.config.n_layer
    layers = default_adapter_layers(n_layer) if layers is None else int(layers)
    if not 1 <= layers <= n_layer:
        raise ConfigError(f"adapter layers must be between 1 and {n_layer} for {model.config.name}, got {layers}")
    if prompt_length < 1:
        raise ConfigError(f"adapter prompt length must be positive, got {prompt_length}")
    for block in list(model.blocks)[n_layer - layers:]:
        attn = block.attn
        if hasattr(attn, "adapter"):
            raise ConfigError("LLaMA-Adapter was already applied to this model")
        w = attn.qkv.weight
        attn.adapter = AdapterPrompt(prompt_length, model.config.n_embd, model.config.n_head,
                                     device=w.device, dtype=w.dtype)
        attn.attend = types.MethodType(_adapted_attend, attn)
    return {"prompt_length": prompt_length, "layers": layers}


def apply_adapter_v2(model: nn.Module, prompt_length: int = 10, layers: Optional[int] = None) -> dict:
    """LLaMA-Adapter v2 in place: v1, plus bias/scale on every linear output, plus trainable norms."""
    options = apply_adapter(model, prompt_length, layers)
    for parent, attr, _ in linear_modules(model):
        adapt_linear(parent, attr).enable_v2()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
            declare(module, [n for n in ("weight", "bias") if getattr(module, n, None) is not None])
    return options
