"""The trainable-parameter protocol and the one linear wrapper PEFT methods inject.

Protocol: any module may carry `peft_params`, a tuple of the names of its own parameters that train
under a parameter-efficient method (LoRA branches, adapter prompts and gates, v2 scales and biases,
norms unfrozen by adapter v2). `mark_trainable(model)` freezes everything else; `trainable_names`
lists the full parameter names, which is also what a PEFT checkpoint stores.

`AdaptedLinear` replaces an `nn.Linear` in a model built the normal way. It takes over the same
`weight` and `bias` Parameters (so checkpoint keys do not change and a tied lm_head stays tied) and
adds optional pieces that methods switch on independently, so methods combine:

    y = W x + b (+ LoRA delta)              then, with adapter v2:  y = scale * (y + v2_bias)
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn

from ..linear import linear


class AdaptedLinear(nn.Module):
    """An nn.Linear stand-in with an optional LoRA branch and optional adapter-v2 scale and bias."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora: Optional[nn.Module] = None
        self.v2_bias: Optional[nn.Parameter] = None
        self.v2_scale: Optional[nn.Parameter] = None

    def enable_v2(self) -> None:
        """Learnable per-output bias (init 0) and scale (init 1): identity at initialization."""
        if self.v2_bias is None:
            kw = dict(device=self.weight.device, dtype=self.weight.dtype)
            self.v2_bias = nn.Parameter(torch.zeros(self.out_features, **kw))
            self.v2_scale = nn.Parameter(torch.ones(self.out_features, **kw))
            declare(self, ("v2_bias", "v2_scale"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        if self.lora is not None:
            y = y + self.lora(x)
        if self.v2_bias is not None:
            y = self.v2_scale * (y + self.v2_bias)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, lora={self.lora is not None}, v2={self.v2_bias is not None}")


def adapt_linear(parent: nn.Module, name: str) -> AdaptedLinear:
    """Replace `parent.<name>` (an nn.Linear) by an AdaptedLinear once; return the wrapper."""
    child = getattr(parent, name)
    if isinstance(child, AdaptedLinear):
        return child
    if not isinstance(child, nn.Linear):
        raise TypeError(f"{type(parent).__name__}.{name} is {type(child).__name__}, not nn.Linear")
    wrapped = AdaptedLinear(child)
    setattr(parent, name, wrapped)
    return wrapped


def linear_modules(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, full name) of every linear layer of a GPT, wrapped or not."""
    found = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Linear, AdaptedLinear)):
                found.append((parent, name, f"{parent_name}.{name}" if parent_name else name))
    return found


def trainable_names(model: nn.Module) -> list[str]:
    """Full names of the parameters declared trainable through `peft_params` (or all, for full)."""
    methods = [m["method"] for m in getattr(model, "peft_methods", [])]
    if "full" in methods:
        return [n for n, _ in model.named_parameters()]
    names = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if getattr(module, "peft_all", False):  # every parameter below this module trains
            names.extend(prefix + n for n, _ in module.named_parameters())
            continue
        for local in getattr(module, "peft_params", ()):
            if getattr(module, local, None) is not None:
                names.append(prefix + local)
    return list(dict.fromkeys(names))


def mark_trainable(model: nn.Module) -> None:
    """requires_grad True exactly for the declared trainable parameters."""
    keep = set(trainable_names(model))
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name in keep)
    # Shared (tied) parameters: trainable if any of their names is.
    for name, param in model.named_parameters():
        if name in keep:
            param.requires_grad_(True)


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters (each shared tensor counted once)."""
    seen, total = set(), 0
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable weights, keyed like model.state_dict() (what a PEFT checkpoint stores)."""
    state = model.state_dict()
    return {name: state[name] for name in trainable_names(model) if name in state}


def declare(module: nn.Module, names: Iterable[str]) -> None:
    """Add parameter names to a module's `peft_params`."""
    module.peft_params = tuple(sorted(set(getattr(module, "peft_params", ())) | set(names)))


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """{trainable parameter name: group} for methods that train disjoint groups on different data
    (LLaMA-Adapter V2 multimodal: "visual" on image data, "instruction" on text-only data).

    A parameter's group is its module's `peft_param_groups[local name]` when given, else the
    `peft_group` of its module or nearest ancestor, else "default"."""
    groups: dict[str, str] = {}
    keep = set(trainable_names(model))

    def walk(module: nn.Module, prefix: str, inherited: str) -> None:
        group = getattr(module, "peft_group", inherited)
        overrides = getattr(module, "peft_param_groups", {})
        for local, _ in module.named_parameters(recurse=False):
            name = prefix + local
            if name in keep:
                groups[name] = overrides.get(local, group)
        for child_name, child in module.named_children():
            walk(child, f"{prefix}{child_name}.", group)

    walk(model, "", "default")
    return groups
