"""One source of truth for the options of `finetune()`, `pretrain()` and `quickstart()`.

Each option is one field of a dataclass below: its default and its documentation. The Python API
validates keyword arguments against it, recipes (recipes/*.yaml) may set any field, and the CLI
builds its flags from it (`--max-steps` for `max_steps`, help text = the field's doc). Resolution:
explicit arguments > the recipe > the defaults here. CLI flags default to "not given", so a recipe
value is never overridden by a flag the user did not pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from ..options import option, option_names
from ..peft import METHOD_ALIASES, METHODS

# Peak learning rate per finetuning method when none is given (LLaMA-Adapter papers, LoRA common use).
METHOD_LR = {"full": 2e-5, "lora": 3e-4, "adapter": 9e-3, "adapter-v2": 3e-3, "minigpt4": 1e-4,
             "adapter-v2-mm": 3e-3, "flamingo": 1e-4}   # flamingo: OpenFlamingo's train.py default

OBJECTIVES = ("sft", "reward", "dpo", "cdpo", "ipo", "kto", "orpo", "simpo", "grpo", "rloo", "distill")
# Which objective options apply to which objectives, and their defaults; any other given is an error.
OBJECTIVE_DEFAULTS = {
    "sft": {},
    "reward": {"margin": 0.0},
    "dpo": {"beta": 0.1, "label_smoothing": 0.0, "sft_weight": 0.0},
    "cdpo": {"beta": 0.1, "label_smoothing": 0.1, "sft_weight": 0.0},
    "ipo": {"beta": 0.1, "sft_weight": 0.0},
    "kto": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    "orpo": {"beta": 0.1},
    "simpo": {"beta": 2.0, "simpo_gamma": 0.5, "label_smoothing": 0.0},
    "grpo": {"beta": 0.04, "reward": None, "num_generations": 4, "max_new_tokens": 16, "temperature": 1.0,
             "clip_epsilon": 0.2},
}
OBJECTIVE_DEFAULTS["rloo"] = OBJECTIVE_DEFAULTS["grpo"]
# distilling step by step: the paper's released code uses alpha 0.5 and these task prefixes
OBJECTIVE_DEFAULTS["distill"] = {"alpha": 0.5, "label_prefix": "predict: ", "rationale_prefix": "explain: "}
OBJECTIVE_OPTIONS = ("beta", "label_smoothing", "sft_weight", "simpo_gamma", "desirable_weight", "undesirable_weight",
                     "margin",
                     "reward", "num_generations", "max_new_tokens", "temperature", "clip_epsilon", "alpha",
                     "label_prefix", "rationale_prefix")


def resolve_objective(opts: dict) -> dict:
    """Fill the objective's options with its defaults (in place); an option given for an objective it does
    not apply to is a ConfigError (never silently ignored)."""
    name = opts.get("objective") or "sft"
    defaults = OBJECTIVE_DEFAULTS[name]
    stray = [k for k in OBJECTIVE_OPTIONS if opts.get(k) is not None and k not in defaults]
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        raise ConfigError(f"{flags} does not apply to --objective {name}",
                          hint=f"--objective {name} takes: "
                               + (", ".join("--" + k.replace("_", "-") for k in defaults) or "no objective options"))
    for key, value in defaults.items():
        if opts.get(key) is None:
            opts[key] = value
    if name in ("grpo", "rloo") and not opts.get("reward"):
        raise ConfigError(f"--objective {name} needs --reward (module:function or a reward-model checkpoint)",
                          hint="e.g. --reward openseason.train.objectives.grpo:exact_match_reward")
    if name == "distill" and not 0.0 <= float(opts["alpha"]) <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (the label task's weight), not {opts['alpha']}")
    if float(opts.get("sft_weight") or 0.0) < 0:
        raise ConfigError(f"--sft-weight must be >= 0, not {opts['sft_weight']}")
    if name == "cdpo" and not 0 < float(opts["label_smoothing"]) < 0.5:
        raise ConfigError("cdpo needs 0 < --label-smoothing < 0.5")
    return opts


ALLOW_CHANGES_DOC = ("with --resume: go on although the learning rate, schedule, batch, sequence length or data differ "
                     "from the checkpoint's (without it such a resume stops and names each difference)")
KEEP_OPTIMIZER_DOC = ("keep the optimizer state in every step-XXXXXX checkpoint (by default only the newest checkpoint "
                      "keeps it: the one a resume reads)")
OVERWRITE_DOC = ("delete what an earlier run left in --out (step checkpoints, final, metrics, logs) and start "
                 "over; without it a non-empty --out is refused unless --resume")
_METHODS_DOC = (f"{', '.join(METHODS)} (also accepted: "
                f"{', '.join(f'{alias}={name}' for alias, name in METHOD_ALIASES.items())})")


COMPILE_DOC = ("compile every transformer block with torch.compile (dynamic shapes): fused kernels, compiled "
               "in the first steps (seconds to a minute; a C++ compiler on the CPU); BENCHMARKS.md has the speed-up")


@dataclass
class FinetuneOptions:
    """Options of `openseason finetune` / `train.finetune()`; see each field's doc."""

    method: str = option("lora", f"finetuning method: {_METHODS_DOC}")
    max_steps: Optional[int] = option(None, "optimizer steps")
    epochs: Optional[float] = option(None, "passes over the data (when max_steps is not given)")
    max_time: Optional[float] = option(None, "stop (saving final) after this many seconds")
    save_every: Optional[int] = option(None, "write OUT/step-XXXXXX every K steps")
    keep_last: Optional[int] = option(None, "keep only the newest N step checkpoints")
    keep_optimizer: bool = option(False, KEEP_OPTIMIZER_DOC)
    overwrite: bool = option(False, OVERWRITE_DOC)
    allow_changes: bool = option(False, ALLOW_CHANGES_DOC)
    eval_every: Optional[int] = option(None, "validation loss and a sample generation every K steps")
    seed: int = option(1337, "seed of initialization, data order and the validation split")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1 (default: cuda if available)")
    precision: Optional[str] = option(None, "bf16 autocast or fp32 (default: bf16 on GPU, fp32 on CPU)",
                                      choices=("bf16", "fp32"))
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass "
                                                 "(less memory, ~30% slower)")
    compile: bool = option(False, COMPILE_DOC)
    micro_batch_size: int = option(4, "examples per forward pass", group="optimization")
    grad_accum: int = option(1, "micro-batches per optimizer step", group="optimization")
    lr: Optional[float] = option(None, "peak learning rate (default per method: "
                                       + ", ".join(f"{m} {v:g}" for m, v in METHOD_LR.items()) + ")",
                                 group="optimization")
    min_lr: Optional[float] = option(None, "end of the cosine decay (default lr/10)", group="optimization")
    warmup_steps: Optional[int] = option(None, "linear warmup steps (default 0)", group="optimization")
    weight_decay: float = option(0.0, "AdamW weight decay", group="optimization")
    grad_clip: Optional[float] = option(1.0, "clip the gradient norm to this", group="optimization")
    max_length: Optional[int] = option(None, "tokens per example, longer ones are cut "
                                             "(default: the context length, at most 2048)", group="data")
    packing: bool = option(False, "pack several examples per row", group="data")
    train_on: str = option("assistant", "which tokens carry loss", group="data", choices=("assistant", "all"))
    prompt_style: Optional[str] = option(None, "override the prompt style stored with the data", group="data")
    val_size: Optional[int] = option(None, "held-out examples for validation loss (default min(64, 5%))",
                                     group="data")
    objective: str = option("sft", "training objective: sft, reward (Bradley-Terry reward model), dpo, cdpo, ipo, "
                                   "kto, orpo, simpo (preference pairs), grpo, rloo (online RL with --reward), distill "
                                   "(distilling step by step on DIR/rationales.jsonl)",
                            group="objective", choices=OBJECTIVES)
    beta: Optional[float] = option(None, "preference / KL strength (default: dpo, cdpo, ipo, kto, orpo 0.1; "
                                         "simpo 2.0; grpo, rloo 0.04)", group="objective")
    label_smoothing: Optional[float] = option(None, "dpo/simpo label smoothing (cdpo default 0.1)", group="objective")
    sft_weight: Optional[float] = option(None, "dpo/cdpo/ipo: weight of the NLL of the chosen completions added to "
                                              "the loss (RPO; TRL's loss_type sigmoid+sft; default 0 = off)",
                                         group="objective")
    simpo_gamma: Optional[float] = option(None, "SimPO target reward margin gamma (default 0.5)", group="objective")
    desirable_weight: Optional[float] = option(None, "KTO weight of desirable (chosen) examples (default 1.0)",
                                               group="objective")
    undesirable_weight: Optional[float] = option(None, "KTO weight of undesirable (rejected) examples (default 1.0)",
                                                 group="objective")
    margin: Optional[float] = option(None, "reward model: Bradley-Terry margin (default 0)", group="objective")
    reward: Optional[str] = option(None, "grpo/rloo: module:function or a reward-model checkpoint",
                                   group="objective")
    num_generations: Optional[int] = option(None, "grpo/rloo: completions per prompt (default 4)", group="objective")
    max_new_tokens: Optional[int] = option(None, "grpo/rloo: tokens per completion (default 16)", group="objective")
    temperature: Optional[float] = option(None, "grpo/rloo: sampling temperature (default 1.0)", group="objective")
    clip_epsilon: Optional[float] = option(None, "grpo/rloo: importance-ratio clip (default 0.2)", group="objective")
    alpha: Optional[float] = option(None, "distill: weight of the label task; the rationale task gets 1 - alpha "
                                          "(default 0.5; 1.0 = label-only)", group="objective")
    label_prefix: Optional[str] = option(None, "distill: prefix of the label task (default 'predict: ')",
                                         group="objective")
    rationale_prefix: Optional[str] = option(None, "distill: prefix of the rationale task (default 'explain: ')",
                                             group="objective")
    lora_rank: int = option(8, "LoRA rank r", group="LoRA")
    lora_alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / r)", group="LoRA")
    lora_dropout: float = option(0.05, "dropout on the LoRA branch input", group="LoRA")
    lora_targets: str = option("q,v", "comma list of q,k,v,qkv,proj,mlp,lm_head or all", group="LoRA")
    adapter_prompt_length: int = option(10, "learned prompt tokens per adapted layer", group="LLaMA-Adapter")
    adapter_layers: Optional[int] = option(None, "adapt the top L layers (default all but the first two)",
                                           group="LLaMA-Adapter")
    vision: Optional[str] = option(None, "minigpt4 / adapter-v2-mm: the vision encoder checkpoint (`openseason "
                                         "vision convert` or `vision train-clip`)", group="multimodal")
    mm_mode: Optional[str] = option(None, "adapter-v2-mm: how the image enters: paper (visual tokens at the first "
                                          "layers, zero-gated; default) or released (visual query added to the late "
                                          "prompts)", group="LLaMA-Adapter V2 multimodal",
                                    choices=("paper", "released"))
    early_layers: Optional[int] = option(None, "adapter-v2-mm paper mode: layers that see the visual tokens "
                                               "(default 1)", group="LLaMA-Adapter V2 multimodal")
    visual_blocks: Optional[int] = option(None, "adapter-v2-mm released mode: transformer blocks of the visual "
                                                "query (default 1)", group="LLaMA-Adapter V2 multimodal")
    xattn_every: Optional[int] = option(None, "flamingo: a gated cross-attention block before every n-th decoder "
                                              "layer (default 1; the released 3B uses 2, the 7B 4)", group="Flamingo")
    perceiver_depth: Optional[int] = option(None, "flamingo: perceiver resampler layers (default 6)",
                                            group="Flamingo")
    num_latents: Optional[int] = option(None, "flamingo: latents per image out of the resampler (default 64)",
                                        group="Flamingo")


@dataclass
class PretrainOptions:
    """Options of `openseason pretrain` / `train.pretrain.pretrain()` (Pythia recipe defaults)."""

    seq_len: Optional[int] = option(None, "tokens per sample (default: the context length)")
    micro_batch_size: int = option(8, "samples per process per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_steps: int = option(1000, "optimizer steps")
    lr: Optional[float] = option(None, "peak learning rate (default: the Pythia size's)")
    min_lr: Optional[float] = option(None, "end of the cosine (default 0.1 x lr)")
    warmup_steps: Optional[int] = option(None, "linear warmup steps (default 1% of max_steps)")
    weight_decay: Optional[float] = option(None, "AdamW weight decay (default 0.1)")
    grad_clip: Optional[float] = option(None, "clip the gradient norm to this (default 1.0)")
    checkpoint_schedule: str = option("none", "pythia: step 0, 1, 2, 4, ..., 512, then every 1000",
                                      choices=("pythia", "none"))
    save_every: Optional[int] = option(None, "write OUT/step-XXXXXX every K steps")
    keep_last: Optional[int] = option(None, "keep only the newest N step checkpoints")
    seed: int = option(1234, "seed of the initial weights")
    device: Optional[str] = option(None, "cpu, cuda (default: cuda if available; torchrun sets the rank's GPU)")
    precision: Optional[str] = option(None, "bf16 or fp32 (default: bf16 on GPU, fp32 on CPU)",
                                      choices=("bf16", "fp32"))
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    compile: bool = option(False, COMPILE_DOC)
    max_time: Optional[float] = option(None, "stop (saving final) after this many seconds")
    keep_optimizer: bool = option(False, KEEP_OPTIMIZER_DOC)
    overwrite: bool = option(False, OVERWRITE_DOC)
    allow_changes: bool = option(False, ALLOW_CHANGES_DOC)


@dataclass
class QuickstartOptions:
    """Options of `openseason quickstart` / `train.quickstart.quickstart()`."""

    model: Optional[str] = option(None, "a real checkpoint to finetune instead of the tiny pretrained one "
                                        "(with --data)")
    data: Optional[str] = option(None, "a prepared directory to finetune on (with --model)")
    pretrain_steps: Optional[int] = option(None, "pretraining steps of the tiny model (default 2000)")
    pretrain_items: Optional[int] = option(None, "generated task items the tiny model is pretrained on "
                                                 "(default 4000)")
    finetune_steps: Optional[int] = option(None, "adapter-v2 finetuning steps (default 600; 200 with --model; 1500 per method with --multimodal)")
    eval_items: Optional[int] = option(None, "held-out items measured before and after (default 100; 50 with "
                                             "--model)")
    seed: int = option(0, "seed of the data, the initialization and the training order")
    overwrite: bool = option(False, "delete what an earlier quickstart left in --out and start over; without it "
                                    "a non-empty --out is refused")
    multimodal: bool = option(False, "images instead: a tiny CLIP, a tiny LM pretrained on the text twins of the "
                                     "synthetic image suite, then MiniGPT-4 and LLaMA-Adapter V2 multimodal, "
                                     "held-out VQA before/after (default steps: pretrain 1500, finetune 1500 per method)")
    scenes: Optional[int] = option(None, "--multimodal: training scenes of the synthetic image suite (default 2000)")
    clip_steps: Optional[int] = option(None, "--multimodal: tiny CLIP training steps (default 1000)")
    flamingo_steps: Optional[int] = option(None, "--multimodal: also OpenFlamingo few-shot classification (0/2/4 "
                                                 "shots on held-out images) with this many Flamingo steps; adds "
                                                 "a few minutes (default 0: skipped)")


# The range of every numeric option: (lowest, highest) with "(" / "[" for open / closed ends; checked
# before anything runs (`check_options`), so `--lr -1` is a clear error, not an optimizer traceback.
RANGES = {
    "max_steps": "[1", "epochs": "(0", "max_time": "(0", "save_every": "[1", "keep_last": "[1", "eval_every": "[1",
    "micro_batch_size": "[1", "grad_accum": "[1", "lr": "(0", "min_lr": "[0", "warmup_steps": "[0",
    "weight_decay": "[0", "grad_clip": "(0", "max_length": "[1", "val_size": "[0", "num_generations": "[1",
    "max_new_tokens": "[1", "temperature": "[0", "lora_rank": "[1", "lora_alpha": "(0", "lora_dropout": "[0,1)",
    "adapter_prompt_length": "[1", "adapter_layers": "[1", "seq_len": "[1", "pretrain_steps": "[1",
    "pretrain_items": "[1", "finetune_steps": "[1", "eval_items": "[1", "early_layers": "[1", "visual_blocks": "[0",
    "scenes": "[1", "clip_steps": "[1",
}
# Options of one finetuning method (by their CLI group): given with another method, they are an error.
METHOD_GROUPS = {"LoRA": ("lora",), "LLaMA-Adapter": ("adapter", "adapter-v2", "adapter-v2-mm"),
                 "multimodal": ("minigpt4", "adapter-v2-mm", "flamingo"),
                 "LLaMA-Adapter V2 multimodal": ("adapter-v2-mm",), "Flamingo": ("flamingo",)}


def _in_range(value: float, spec: str) -> bool:
    low, _, high = spec[1:].rstrip(")]").partition(",")
    ok = value > float(low) if spec[0] == "(" else value >= float(low)
    if high:
        ok = ok and (value < float(high) if spec.endswith(")") else value <= float(high))
    return ok


def check_options(options) -> None:
    """ConfigError naming the first option out of its range (RANGES), or a device this machine lacks."""
    for name, spec in RANGES.items():
        value = getattr(options, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, spec):
            low, _, high = spec[1:].rstrip(")]").partition(",")
            wanted = f"{'>' if spec[0] == '(' else '>='} {low}" + (f" and {'<' if spec.endswith(')') else '<='} "
                                                                   f"{high}" if high else "")
            raise ConfigError(f"--{name.replace('_', '-')} must be {wanted}, not {value:g}",
                              hint=f"`{name}:` in a recipe is the same option")
    if getattr(options, "device", None) is not None:
        from ..device import check_device
        check_device(options.device)


def check_method_options(cls, method: str, explicit: dict[str, Any]) -> None:
    """ConfigError when an option of one finetuning method is set (`explicit`: flags and recipe values,
    None = not given) for another: `--lora-targets` with `--method adapter` is never silently ignored."""
    from ..peft import canonical_method

    method = canonical_method(method)
    for f in dataclasses.fields(cls):
        methods = METHOD_GROUPS.get(f.metadata.get("group"))
        if methods and explicit.get(f.name) is not None and method not in methods:
            raise ConfigError(f"--{f.name.replace('_', '-')} does not apply to --method {method}",
                              hint=f"it is an option of --method {' / '.join(methods)}: drop it or change the method")


def resolve(cls, given: dict[str, Any], recipe: Optional[dict[str, Any]] = None, *, what: str = "options"):
    """defaults < recipe < given (None in `given` means "not given"); unknown names are a ConfigError."""
    names = option_names(cls)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}", hint=f"valid: {', '.join(sorted(names))}")
    values = {**(recipe or {}), **{k: v for k, v in given.items() if v is not None}}
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and values.get(f.name) is not None and values[f.name] not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, not {values[f.name]!r}")
    if "method" in names:
        check_method_options(cls, values.get("method") or cls.method, values)
    options = cls(**values)
    check_options(options)
    return options
