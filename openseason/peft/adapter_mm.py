"""LLaMA-Adapter V2 multimodal (Gao et al., arXiv 2304.15010), on top of adapter v2 (adapter.py).

Method "adapter-v2-mm" = adapter v2 (late-layer prompts with zero-initialized gates, bias/scale on
every linear output, trainable norms) + an image front-end at `model.media`. The image enters one of
two ways, chosen by `mode`:

  "paper"     early fusion as the paper describes it: the encoder's tokens, projected to the model
              width (`media.proj` + `media.norm`), are joined to the word tokens at the first
              `early_layers` layers through zero-initialized attention: each such layer gets an
              `attn.visual_adapter` whose gated term attends over the visual tokens (keys and values
              from the layer's own frozen projections, its own softmax, a per-head gate at zero).
  "released"  as the released code (llama_adapter_v2_multimodal7b) does it: a visual query. Learned
              query tokens are joined to the projected image features, run through small transformer
              blocks, the query outputs are projected to the model width, and this [K, n_embd] visual
              query is ADDED to the adaptation prompts of the late layers (K = prompt_length).

Both carry the image through per-row `extras` (GPT.forward), so the image takes no position in the
token sequence and decoding with the KV cache keeps each row's image.

Joint training with disjoint parameter groups (`peft.base.parameter_groups`): image data trains the
"visual" group, text-only instruction data the "instruction" group (train/objectives/multimodal.py):

  visual       media.* (projection; released: also the visual query and blocks) and the early gates
               (paper). In "released" mode there are no early layers: the visual query reaches the model
               only through the late prompts' zero-initialized gates, so those gates are in this group
               (with them frozen at zero the visual part would never receive a gradient).
  instruction  the late prompts (and, in "paper" mode, their gates), bias/scale, norms.

At initialization every gate is zero, so the model equals the base LM with or without an image.
"""
from __future__ import annotations

import types
from typing import Optional

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..linear import Linear
from .adapter import _adapted_attend, apply_adapter_v2, gated_prompt_attention
from .base import declare
from .media import VisionTower, check_fingerprint, load_tower, one_per_row, tower_options

MODES = ("paper", "released")


class EarlyVisualPrompt(nn.Module):
    """`attn.visual_adapter` of an early layer (paper mode): zero-gated attention over the row's visual tokens."""

    peft_all = True
    peft_group = "visual"

    def __init__(self, n_head: int, device=None, dtype=None):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1, n_head, 1, 1, device=device, dtype=dtype))

    def forward(self, q: torch.Tensor, attn: nn.Module, extras: Optional[dict] = None) -> torch.Tensor:
        tokens = extras.get("visual_tokens") if extras else None
        if tokens is None:
            return q.new_zeros(())
        return gated_prompt_attention(q, attn, tokens, self.gate, extras["visual_present"])


class AdapterV2Media(nn.Module):
    """model.media of adapter-v2-mm: the frozen tower and the trainable visual modules."""

    image_tokens = 0
    max_images = 1
    peft_group = "visual"

    def __init__(self, tower: VisionTower, n_embd: int, mode: str, query_length: int, visual_blocks: int,
                 visual_heads: int):
        super().__init__()
        self.tower, self.mode = tower, mode
        device = next(tower.parameters()).device
        dim = tower.hidden_size
        if mode == "released":
            self.clip_proj = Linear(dim, dim, device=device)
            self.clip_norm = nn.LayerNorm(dim, device=device)
            self.query = nn.Parameter(torch.randn(query_length, dim, device=device) * 0.02)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, visual_heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, device=device)
                for _ in range(visual_blocks))
        self.proj = Linear(dim, n_embd, device=device)
        self.norm = nn.LayerNorm(n_embd, device=device)

        # every parameter here trains except the frozen tower's
        for name, module in self.named_modules():
            if name != "tower" and not name.startswith("tower."):
                declare(module, [n for n, _ in module.named_parameters(recurse=False)])

    def preprocess(self, image) -> torch.Tensor:
        return self.tower.preprocess(image)

    def visual(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """paper: the visual tokens [M, N, n_embd]; released: the visual query [M, K, n_embd]."""
        features = self.tower(pixel_values).to(self.proj.weight.dtype)
        if self.mode == "paper":
            return self.norm(self.proj(features))
        x = self.clip_norm(self.clip_proj(features))
        query = self.query.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([query, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(self.proj(x[:, :query.shape[1]]))

    def inputs(self, model, input_ids, pixel_values, image_rows, image_starts):
        if pixel_values is None or pixel_values.shape[0] == 0:
            return None, None
        batch = input_ids.shape[0]
        per_row, present = one_per_row(batch, self.visual(pixel_values), image_rows)
        if self.mode == "paper":
            return None, {"visual_tokens": per_row, "visual_present": present}
        return None, {"adapter_prompt_add": per_row}


def apply_adapter_v2_mm(model: nn.Module, vision=None, mode: str = "paper", prompt_length: int = 10,
                        layers: Optional[int] = None, early_layers: Optional[int] = None,
                        visual_blocks: Optional[int] = None, visual_heads: Optional[int] = None,
                        vision_fingerprint: Optional[str] = None) -> dict:
    """LLaMA-Adapter V2 multimodal in place (see the module docstring); returns the resolved options.
    early_layers (paper mode, default 1), visual_blocks and visual_heads (released mode, default 1 and 4)
    are refused in the other mode."""
    if mode not in MODES:
        raise ConfigError(f"adapter-v2-mm mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "paper" and (visual_blocks is not None or visual_heads is not None):
        raise ConfigError("visual_blocks / visual_heads apply to adapter-v2-mm mode 'released', not 'paper'")
    if mode == "released" and early_layers is not None:
        raise ConfigError("early_layers applies to adapter-v2-mm mode 'paper', not 'released'",
                          hint="in 'released' mode the visual query goes to the late layers' prompts")
    early_layers = 1 if early_layers is None else int(early_layers)
    visual_blocks = 1 if visual_blocks is None else int(visual_blocks)
    visual_heads = 4 if visual_heads is None else int(visual_heads)
    if getattr(model, "media", None) is not None:
        raise ConfigError("the model already has a multimodal front-end (model.media)")
    n_layer = model.config.n_layer
    if mode == "paper" and not 1 <= early_layers <= n_layer:
        raise ConfigError(f"early_layers must be between 1 and {n_layer}, got {early_layers}")
    if mode == "released" and visual_blocks < 0:
        raise ConfigError(f"visual_blocks must be 0 or more, got {visual_blocks}")
    tower = load_tower(vision)
    check_fingerprint(tower, vision_fingerprint, where=f"vision encoder {tower.source}")
    if mode == "released" and tower.hidden_size % visual_heads:
        raise ConfigError(f"visual_heads={visual_heads} does not divide the encoder width {tower.hidden_size}")
    options = apply_adapter_v2(model, prompt_length, layers)
    model.peft_group = "instruction"
    w = model.embed.weight
    late = list(model.blocks)[n_layer - options["layers"]:]
    if mode == "paper":
        for block in list(model.blocks)[:early_layers]:
            attn = block.attn
            attn.visual_adapter = EarlyVisualPrompt(model.config.n_head, device=w.device, dtype=w.dtype)
            attn.attend = types.MethodType(_adapted_attend, attn)
    else:
        for block in late:
            block.attn.adapter.peft_param_groups = {"gate": "visual"}
    model.media = AdapterV2Media(tower, model.config.n_embd, mode, prompt_length, visual_blocks, visual_heads)
    resolved = {**options, "mode": mode, **tower_options(tower)}
    if mode == "paper":
        resolved["early_layers"] = early_layers
    else:
        resolved.update(visual_blocks=visual_blocks, visual_heads=visual_heads)
    return resolved
