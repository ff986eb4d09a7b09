"""Parameter-efficient finetuning by composition: methods inject modules into a normal GPT.

    from openseason.peft import apply, count_trainable
    model = apply(model, "lora", rank=8, alpha=16, targets=["q", "v"])
    model = apply(model, "adapter-v2", prompt_length=10, layers=30)   # methods combine
    count_trainable(model)

Methods: "full" (everything trains), "lora", "adapter" (LLaMA-Adapter v1), "adapter-v2", and the
multimodal "minigpt4" (frozen encoder -> trainable projection, minigpt4.py), "adapter-v2-mm"
(LLaMA-Adapter V2 multimodal, adapter_mm.py) and "flamingo" (OpenFlamingo's perceiver resampler and
gated cross-attention, flamingo.py), which attach an image front-end at `model.media`. Each call
records {"method", "options"} in `model.peft_methods` (what a PEFT checkpoint stores) and re-marks
which parameters train (see base.py for the protocol).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from .adapter import apply_adapter, apply_adapter_v2
from .base import (AdaptedLinear, count_trainable, mark_trainable, parameter_groups, trainable_names,
                   trainable_state_dict)
from .lora import apply_lora, export_peft, merge_lora

# The one list of finetuning method names, and the aliases accepted for them everywhere (API, CLI, recipes).
METHODS = ("full", "lora", "adapter", "adapter-v2", "minigpt4", "adapter-v2-mm", "flamingo")
MULTIMODAL_METHODS = ("minigpt4", "adapter-v2-mm", "flamingo")
METHOD_ALIASES = {"adapter-v1": "adapter", "adapter_v1": "adapter", "adapter_v2": "adapter-v2",
                  "llama-adapter": "adapter", "adapter_v2_mm": "adapter-v2-mm", "mini-gpt4": "minigpt4"}

__all__ = ["apply", "count_trainable", "merge", "export_peft", "trainable_names", "trainable_state_dict",
           "METHODS", "METHOD_ALIASES", "MULTIMODAL_METHODS", "AdaptedLinear", "is_peft", "canonical_method",
           "parameter_groups", "is_multimodal"]


def canonical_method(method: str) -> str:
    """The method's canonical name (aliases resolved); an unknown name is a ConfigError."""
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise ConfigError(f"unknown finetuning method {method!r}",
                          hint=f"choose from {', '.join(METHODS)} (or an alias: {', '.join(METHOD_ALIASES)})")
    return method


def apply(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Adapt `model` in place with `method` and return it; `options` are the method's keyword arguments
    (lora: rank, alpha, dropout, targets; adapter / adapter-v2: prompt_length, layers; minigpt4: vision;
    adapter-v2-mm: vision, mode, prompt_length, layers, early_layers, visual_blocks, visual_heads;
    flamingo: see `flamingo.apply_flamingo`)."""
    method = canonical_method(method)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        if method == "full":
            if options:
                raise TypeError(f"unexpected options {sorted(options)}")
            resolved: dict = {}
        elif method == "lora":
            resolved = apply_lora(model, **options)
        elif method == "adapter":
            resolved = apply_adapter(model, **options)
        elif method == "minigpt4":
            from .minigpt4 import apply_minigpt4

            resolved = apply_minigpt4(model, **options)
        elif method == "adapter-v2-mm":
            from .adapter_mm import apply_adapter_v2_mm

            resolved = apply_adapter_v2_mm(model, **options)
        elif method == "flamingo":
            from .flamingo import apply_flamingo

            resolved = apply_flamingo(model, **options)
        else:
            resolved = apply_adapter_v2(model, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for method {method!r}: {exc}") from None
    if not hasattr(model, "peft_methods"):
        model.peft_methods = []
    model.peft_methods.append({"method": method, "options": resolved})
    mark_trainable(model)
    return model


def is_peft(model: nn.Module) -> bool:
    """True when the model trains only injected/selected parameters (its checkpoints are small)."""
    methods = [m["method"] for m in getattr(model, "peft_methods", [])]
    return bool(methods) and "full" not in methods


def is_multimodal(model: nn.Module) -> bool:
    """True when the model has an image front-end (model.media): it takes images in prompts."""
    return getattr(model, "media", None) is not None


def merge(model: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights (in place) so the model is a plain GPT again.

    LLaMA-Adapter prompts add attention over learned tokens and cannot be folded into weights."""
    methods = [m["method"] for m in getattr(model, "peft_methods", [])]
    if "minigpt4" in methods:
        raise ConfigError("a MiniGPT-4 checkpoint cannot be merged into plain weights (its projection feeds "
                          "images, which a plain decoder does not take)",
                          hint="load the checkpoint directly: LLM.load, chat and serve all do")
    if "flamingo" in methods:
        raise ConfigError("Flamingo checkpoints cannot be merged into plain weights (the resampler and the "
                          "cross-attention blocks are extra modules)", hint="load the checkpoint directly")
    if any(m.startswith("adapter") for m in methods):
        raise ConfigError("LLaMA-Adapter checkpoints cannot be merged into plain weights (the learned prompts "
                          "are extra attention, not a weight update)",
                          hint="load the adapter checkpoint directly: LLM.load, generate, chat and serve all do")
    merge_lora(model)
    for parent, attr, _ in _wrapped(model):
        lin = getattr(parent, attr)
        plain = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        plain.weight, plain.bias = lin.weight, lin.bias
        setattr(parent, attr, plain)
    model.peft_methods = [m for m in getattr(model, "peft_methods", []) if m["method"] == "full"]
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _wrapped(model: nn.Module):
    from .base import linear_modules

    return [(p, n, f) for p, n, f in linear_modules(model) if isinstance(getattr(p, n), AdaptedLinear)]
