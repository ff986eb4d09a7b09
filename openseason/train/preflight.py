"""Checks before a training run's first step, and the summary of what the run is about to do.

`finetune` and `pretrain` call the checks before they touch the run directory, so a bad option costs
nothing: no `--out` is created, no metrics are written, no step is taken. Each check raises a
ConfigError naming the flag, the value and what would be accepted.

The summary (`run_summary`) is printed before step 1 and written to OUT/preflight.json (and the run
card): the model and its parameter counts, the method and objective, the data rows kept and dropped
per reason, the batch geometry, tokens per step, the steps and the epochs they make, and for
pretraining whether the token stream wraps around (samples repeat).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError
from ..fileio import write_json_atomic

PREFLIGHT_NAME = "preflight.json"

# What each numeric option must satisfy: (test, what the message says it must be). None = not given.
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_POSITIVE = (lambda v: v > 0, "greater than 0")
_NON_NEGATIVE = (lambda v: v >= 0, "0 or more")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": _POSITIVE, "min_lr": _NON_NEGATIVE, "micro_batch_size": _AT_LEAST_1, "grad_accum": _AT_LEAST_1,
    "max_steps": _AT_LEAST_1, "epochs": _POSITIVE, "max_time": _POSITIVE, "save_every": _AT_LEAST_1,
    "keep_last": _AT_LEAST_1, "eval_every": _AT_LEAST_1, "warmup_steps": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE, "grad_clip": _NON_NEGATIVE, "max_length": _AT_LEAST_1, "seq_len": _AT_LEAST_1,
    "val_size": _NON_NEGATIVE, "lora_rank": _AT_LEAST_1, "lora_alpha": _POSITIVE, "lora_dropout": _FRACTION,
    "adapter_prompt_length": _AT_LEAST_1, "adapter_layers": _AT_LEAST_1, "num_generations": _AT_LEAST_1,
    "max_new_tokens": _AT_LEAST_1,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_numbers(opts: dict[str, Any]) -> None:
    """Every numeric option in `opts` within its range (RULES); the first one that is not is a ConfigError."""
    for name, (ok, must) in RULES.items():
        value = opts.get(name)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{flag(name)} must be {must}, not {value!r}")
    if opts.get("min_lr") is not None and opts.get("lr") is not None and opts["min_lr"] > opts["lr"]:
        raise ConfigError(f"--min-lr {opts['min_lr']} is above --lr {opts['lr']}",
                          hint="the cosine schedule decays from --lr down to --min-lr")


def check_device(device: Optional[str]) -> str:
    """The device the run will use ("cuda" when available and none is named); a device this machine
    does not have is a ConfigError here, not a confusing failure while loading weights."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device", hint="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__} sees none)", hint="use --device cpu, or leave --device out")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available here", hint="use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: training runs on cpu, cuda or mps")
    return str(dev)


def check_out_dir(out: Path) -> None:
    """`out` must be (or become) a directory: neither it nor a folder above it may be a file."""
    path = Path(out)
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "--out is a file, not a directory" if parent == path else f"{parent} is a file, not a directory"
                raise ConfigError(what, where=str(out), hint="choose a directory for the run's checkpoints and logs")
            return


def check_length(name: str, value: Optional[int], context: int, model: str) -> None:
    """A sequence length option no longer than the model's context window."""
    if value is not None and value > context:
        raise ConfigError(f"{flag(name)} {value} is longer than the model's context window ({context} tokens)",
                          where=model, hint=f"use {flag(name)} {context} or less")


# -- the summary ------------------------------------------------------------------------------------
def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total and trainable parameters (each shared tensor counted once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def data_rows(report: dict, train: int, val: int) -> dict[str, Any]:
    """The rows a tokenization report read, kept and dropped per reason, and the train/validation split."""
    dropped = dict(report.get("dropped") or {})
    return {"read": report.get("read", train + val + sum(dropped.values())), "kept": report.get("kept", train + val),
            "dropped": dropped, "truncated": report.get("truncated", 0), "train": train, "validation": val}


def run_summary(*, parameters: dict[str, int], model_name: str, method: str, objective: str, device: str,
                precision: str, data: dict, micro_batch_size: int, grad_accum: int, world_size: int,
                max_steps: int, max_length: int, per_step_unit: str, tokens_per_step: int,
                tokens_exact: bool, lr: float, warmup_steps: int, min_lr: float,
                epoch_size: Optional[int] = None, extra: Optional[dict] = None) -> dict[str, Any]:
    """The facts of a run before its first step (JSON-able). `epoch_size` is the number of training
    rows (samples for pretraining) one pass covers; `per_step_unit` names what a batch counts."""
    batch = micro_batch_size * grad_accum * world_size
    epochs = max_steps * batch / epoch_size if epoch_size else None
    summary = {
        "model": model_name, "parameters": parameters, "method": method, "objective": objective,
        "device": device, "precision": precision, "data": data,
        "batch": {"micro_batch_size": micro_batch_size, "grad_accum": grad_accum, "processes": world_size,
                  "effective": batch, "unit": per_step_unit},
        "max_length": max_length, "tokens_per_step": tokens_per_step, "tokens_per_step_exact": tokens_exact,
        "max_steps": max_steps, "epochs": round(epochs, 4) if epochs is not None else None,
        "schedule": {"lr": lr, "warmup_steps": warmup_steps, "min_lr": min_lr},
    }
    summary.update(extra or {})
    return summary


def _count(n: int) -> str:
    return f"{n:,}"


def format_summary(s: dict) -> str:
    """The summary as the lines printed before step 1."""
    p = s["parameters"]
    share = f" ({p['trainable'] / p['total']:.2%})" if p["total"] else ""
    lines = [f"model       {s['model']}: {_count(p['total'])} parameters, {_count(p['trainable'])} trainable{share}",
             f"method      {s['method']}, objective {s['objective']}, on {s['device']} ({s['precision']})"]
    d = s["data"]
    if "read" in d:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(d["dropped"].items())) or "none"
        lines.append(f"data        {_count(d['read'])} rows read, {_count(d['kept'])} kept, "
                     f"{_count(sum(d['dropped'].values()))} dropped ({dropped})"
                     + (f", {_count(d['truncated'])} cut to {s['max_length']} tokens" if d.get("truncated") else ""))
        lines.append(f"split       {_count(d['train'])} train / {_count(d['validation'])} validation")
    else:
        lines.append(f"data        {_count(d['tokens'])} tokens in {_count(d['documents'])} documents -> "
                     f"{_count(d['samples'])} samples of {s['max_length'] + 1} tokens")
    b = s["batch"]
    lines.append(f"batch       {b['micro_batch_size']} x {b['grad_accum']} accumulation x {b['processes']} "
                 f"process(es) = {b['effective']} {b['unit']} per step")
    approx = "" if s["tokens_per_step_exact"] else "at most "
    lines.append(f"tokens      {approx}{_count(s['tokens_per_step'])} per step")
    sch = s["schedule"]
    lines.append(f"steps       {s['max_steps']} (lr {sch['lr']:.3g}, warmup {sch['warmup_steps']}, "
                 f"cosine to {sch['min_lr']:.3g})")
    if s.get("epochs") is not None:
        line = f"epochs      {s['epochs']:.3g} passes over the training {b['unit']}"
        if "wraps" in s:
            line += (f"; the token stream WRAPS: samples repeat from step {s['wraps_at_step']}" if s["wraps"]
                     else "; the token stream does not wrap")
        lines.append(line)
    return "\n".join(lines)


def announce(summary: dict, out: Path, *, main_process: bool = True) -> None:
    """Print the summary (stderr, with the progress: stdout stays the command's result) and write
    OUT/preflight.json."""
    if not main_process:
        return
    print("openseason: run summary (also in " + str(Path(out) / PREFLIGHT_NAME) + ")", file=sys.stderr)
    print("\n".join("  " + line for line in format_summary(summary).splitlines()), file=sys.stderr, flush=True)
    write_json_atomic(Path(out) / PREFLIGHT_NAME, summary)
