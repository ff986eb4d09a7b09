"""LoRA (Hu et al., 2021, arXiv 2106.09685) as a branch injected into linear layers.

    y = W x + b + (alpha / r) * B A dropout(x)          A: [r, in] (Kaiming-uniform), B: [out, r] (zeros)

Targets: "q", "k", "v" (each its own row block of the fused qkv, see model.py), "qkv" (one branch
over the whole fused projection), "proj" (attention output), "mlp" (every MLP linear) and
"lm_head". `merge_lora` folds the branches into the base weights; `export_peft` writes the adapter in
Hugging Face PEFT's format for the model `openseason convert to-hf` writes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .base import AdaptedLinear, adapt_linear

TARGETS = ("q", "k", "v", "qkv", "proj", "mlp", "lm_head")
DEFAULT_TARGETS = ("q", "v")


class LoRABranch(nn.Module):
    """Low-rank update for some row blocks ("parts") of one linear layer's output.

    `parts` maps a name to (first row, number of rows); rows outside every part get no update. A
    plain linear layer has one part covering all rows.
    """

    peft_all = True  # trainable-parameter protocol: every parameter of the branch trains

    def __init__(self, in_features: int, out_features: int, parts: dict[str, tuple[int, int]], rank: int,
                 alpha: float, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRA rank must be positive, got {rank}")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.parts = dict(sorted(parts.items(), key=lambda item: item[1][0]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A = nn.ParameterDict({n: nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
                                   for n in self.parts})
        self.B = nn.ParameterDict({n: nn.Parameter(torch.zeros(size, rank, device=device, dtype=dtype))
                                   for n, (_, size) in self.parts.items()})
        for a in self.A.values():
            # The same init as the reference implementation: B = 0 makes the branch a no-op at start.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.B[name] @ self.A[name]) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        names = list(self.parts)
        low = x @ torch.cat([self.A[n] for n in names]).t()           # one matmul for all parts
        lows = low.split(self.rank, dim=-1)
        pieces, row = [], 0
        for name, part_low in zip(names, lows):
            start, size = self.parts[name]
            if start > row:
                pieces.append(x.new_zeros(*x.shape[:-1], start - row))
            pieces.append(part_low @ self.B[name].t())
            row = start + size
        if row < self.out_features:
            pieces.append(x.new_zeros(*x.shape[:-1], self.out_features - row))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return out * self.scaling


def resolve_targets(targets: Optional[Sequence[str] | str]) -> tuple[str, ...]:
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    aliases = {"o": "proj", "attn_proj": "proj", "out": "proj", "head": "lm_head"}
    out = []
    for target in targets:
        target = aliases.get(target, target)
        if target == "all":
            out.extend(("q", "k", "v", "proj", "mlp", "lm_head"))
            continue
        if target not in TARGETS:
            raise ConfigError(f"unknown LoRA target {target!r}", hint=f"choose from {', '.join(TARGETS)} or all")
        out.append(target)
    if "qkv" in out and {"q", "k", "v"} & set(out):
        raise ConfigError("LoRA target 'qkv' (the whole fused projection) overlaps 'q'/'k'/'v'; pick one form")
    return tuple(dict.fromkeys(out))


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Optional[Sequence[str] | str] = None) -> dict:
    """Inject LoRA branches into `model` (in place); returns the resolved options."""
    targets = resolve_targets(targets)
    cfg = model.config

    def add(parent: nn.Module, attr: str, parts: Optional[dict] = None) -> None:
        lin: AdaptedLinear = adapt_linear(parent, attr)
        if lin.lora is not None:
            raise ConfigError(f"LoRA was already applied to {attr}")
        lin.lora = LoRABranch(lin.in_features, lin.out_features, parts or {"all": (0, lin.out_features)},
                              rank, alpha, dropout, device=lin.weight.device, dtype=lin.weight.dtype)

    q_size, kv_size = cfg.n_head * cfg.head_size, cfg.n_query_groups * cfg.head_size
    qkv_rows = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}
    for block in model.blocks:
        parts = {t: qkv_rows[t] for t in ("q", "k", "v") if t in targets}
        if parts:
            add(block.attn, "qkv", parts)
        elif "qkv" in targets:
            add(block.attn, "qkv")
        if "proj" in targets:
            add(block.attn, "proj")
        if "mlp" in targets:
            for name, child in list(block.mlp.named_children()):
                if isinstance(child, (nn.Linear, AdaptedLinear)):
                    add(block.mlp, name)
    if "lm_head" in targets:
        add(model, "lm_head")
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA branch into its base weight and remove it (in place)."""
    for module in model.modules():
        if isinstance(module, AdaptedLinear) and module.lora is not None:
            branch = module.lora
            for name, (start, size) in branch.parts.items():
                delta = branch.delta_weight(name).to(module.weight.dtype)
                module.weight[start:start + size] += delta
            module.lora = None
    return model


# -- Hugging Face PEFT export ------------------------------------------------------------------------
def _hf_names(family: str, name: str) -> Optional[str]:
    """HF module path of our linear layer `name` (the qkv case is handled by the caller)."""
    parts = name.split(".")
    if name == "lm_head":
        return _neox_head_name() if family == "gpt_neox" else "lm_head"
    if parts[0] != "blocks":
        return None
    i, rest = parts[1], ".".join(parts[2:])
    if family == "gpt_neox":
        table = {"attn.qkv": "attention.query_key_value", "attn.proj": "attention.dense",
                 "mlp.fc": "mlp.dense_h_to_4h", "mlp.proj": "mlp.dense_4h_to_h"}
        return f"gpt_neox.layers.{i}.{table[rest]}" if rest in table else None
    table = {"attn.proj": "self_attn.o_proj", "mlp.fc_1": "mlp.gate_proj", "mlp.fc_2": "mlp.up_proj",
             "mlp.proj": "mlp.down_proj"}
    return f"model.layers.{i}.{table[rest]}" if rest in table else None


def _neox_head_name() -> str:
    """GPTNeoXForCausalLM calls its output layer `embed_out` before transformers 5, `lm_head` since."""
    try:
        import transformers
    except ImportError:
        return "lm_head"
    return "embed_out" if int(transformers.__version__.split(".")[0]) < 5 else "lm_head"


@torch.no_grad()
def peft_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """LoRA tensors under HF PEFT's key names, plus per-module rank and alpha."""
    cfg = model.config
    state, ranks, alphas = {}, {}, {}

    def put(module_path: str, a: torch.Tensor, b: torch.Tensor, rank: int, alpha: float) -> None:
        # clone: q/k/v of a fused "qkv" branch share A, and safetensors refuses shared storage
        state[f"base_model.model.{module_path}.lora_A.weight"] = a.detach().float().clone()
        state[f"base_model.model.{module_path}.lora_B.weight"] = b.detach().float().clone()
        ranks[module_path], alphas[module_path] = rank, alpha

    for name, module in model.named_modules():
        if not isinstance(module, AdaptedLinear) or module.lora is None:
            continue
        if module.v2_bias is not None:
            raise ConfigError("cannot export LoRA in PEFT format from a model that also has adapter-v2 scales")
        br = module.lora
        if name.endswith("attn.qkv"):
            i = name.split(".")[1]
            q_size = cfg.n_head * cfg.head_size
            kv_size = cfg.n_query_groups * cfg.head_size
            rows = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}
            if cfg.family == "llama":
                for part, (start, size) in rows.items():
                    if part in br.parts:
                        put(f"model.layers.{i}.self_attn.{part}_proj", br.A[part], br.B[part], br.rank, br.alpha)
                    elif "all" in br.parts:
                        put(f"model.layers.{i}.self_attn.{part}_proj", br.A["all"],
                            br.B["all"][start:start + size], br.rank, br.alpha)
                continue
            # GPT-NeoX: one fused query_key_value whose rows HF interleaves per head as [q, k, v].
            names = list(br.parts)
            a = torch.cat([br.A[n] for n in names])                       # [n*r, in]
            b = torch.zeros(module.out_features, len(names) * br.rank)
            for j, n in enumerate(names):
                start, size = br.parts[n]
                b[start:start + size, j * br.rank:(j + 1) * br.rank] = br.B[n].float()
            nh, hs = cfg.n_head, cfg.head_size
            b = b.view(3, nh, hs, -1).transpose(0, 1).reshape(3 * nh * hs, -1)
            # Rank n*r with alpha n*alpha keeps HF's scaling alpha/r equal to ours.
            put(f"gpt_neox.layers.{i}.attention.query_key_value", a, b, len(names) * br.rank,
                len(names) * br.alpha)
            continue
        hf = _hf_names(cfg.family, name)
        if hf is None:
            raise ConfigError(f"no Hugging Face name for LoRA on {name}")
        put(hf, br.A["all"], br.B["all"], br.rank, br.alpha)
    return state, ranks, alphas


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: Optional[str] = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained`
    loads over the Hugging Face model written by `openseason.convert.convert_to_hf`."""
    from safetensors.torch import save_file

    from ..fileio import replace_dir, staging_dir

    state, ranks, alphas = peft_state(model)
    if not state:
        raise ConfigError("the model has no LoRA branches to export", hint="train with --method lora")
    options = next((m["options"] for m in getattr(model, "peft_methods", []) if m["method"] == "lora"), {})
    first = next(iter(ranks))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": ranks[first], "lora_alpha": alphas[first], "lora_dropout": float(options.get("dropout", 0.0)),
        "target_modules": sorted(ranks), "rank_pattern": ranks, "alpha_pattern": alphas,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False,
    }
    final = Path(out_dir)
    tmp = staging_dir(final)
    save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    replace_dir(tmp, final)
    return final
