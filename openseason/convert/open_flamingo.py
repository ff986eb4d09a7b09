"""Key map from a released OpenFlamingo checkpoint (its `perceiver.*` and
`lang_encoder.gated_cross_attn_layers.*` tensors) to ours (`perceiver.*`, `blocks.{i}.xattn.*`).

The released modules keep their feed-forwards as nn.Sequential (indices 0 = LayerNorm, 1 = Linear,
3 = Linear; 2 is the GELU) and each perceiver layer as a ModuleList [attention, feed-forward]; ours
name them. The language model's own weights come from `convert_from_hf` as for any checkpoint.
"""
from __future__ import annotations

import re

import torch

from ..errors import CheckpointError

_FF = {"0": "norm", "1": "fc", "3": "proj"}
_RULES = [
    (re.compile(r"^perceiver\.layers\.(\d+)\.0\.(.+)$"), lambda m: f"perceiver.layers.{m[1]}.attn.{m[2]}"),
    (re.compile(r"^perceiver\.layers\.(\d+)\.1\.(\d)\.(.+)$"),
     lambda m: f"perceiver.layers.{m[1]}.ff.{_FF[m[2]]}.{m[3]}"),
    (re.compile(r"^perceiver\.(latents|frame_embs|media_time_embs|norm\.weight|norm\.bias)$"), lambda m: m[0]),
    (re.compile(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.ff\.(\d)\.(.+)$"),
     lambda m: f"blocks.{m[1]}.xattn.ff.{_FF[m[2]]}.{m[3]}"),
    (re.compile(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)$"), lambda m: f"blocks.{m[1]}.xattn.{m[2]}"),
]


def flamingo_key(name: str) -> str | None:
    """Our name for a released OpenFlamingo tensor name, or None when it is not a Flamingo part."""
    for pattern, rename in _RULES:
        match = pattern.match(name)
        if match:
            return rename(match)
    return None


def load_open_flamingo_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> list[str]:
    """Copy the released Flamingo tensors of `state` into `model` (Flamingo already applied); returns
    our names loaded. Every Flamingo tensor of ours must be present, with the same shape."""
    ours = model.state_dict()
    loaded = {}
    for name, tensor in state.items():
        key = flamingo_key(name)
        if key is None:
            continue
        if key not in ours:
            raise CheckpointError(f"{name} has no counterpart ({key}) in this model", where=where,
                                  hint="apply flamingo with the same every / depth / heads as the checkpoint")
        if ours[key].shape != tensor.shape:
            raise CheckpointError(f"{name}: shape {tuple(tensor.shape)} != ours {tuple(ours[key].shape)}", where=where)
        loaded[key] = tensor
    wanted = {k for k in ours if k.startswith("perceiver.") or ".xattn." in k}
    missing = sorted(wanted - set(loaded))
    if missing:
        raise CheckpointError(f"{len(missing)} Flamingo tensors missing, e.g. {missing[0]}", where=where)
    with torch.no_grad():
        for key, tensor in loaded.items():
            ours[key].copy_(tensor)
    return sorted(loaded)
