"""Checks before a training run's first step, and the summary of what the run is about to do.

`options.resolve` checks each option's range and the device; `finetune` and `pretrain` add the checks
that need more than one option or the model (max_length / seq_len within the context window, min_lr
below lr, --allow-changes only with --resume, the data exists) before they touch the run directory,
so a bad option costs nothing: no `--out` is created, no metrics are written, no step is taken.

The summary (`run_summary`) is printed before step 1 and written to OUT/preflight.json (and the run
card): the model and its parameter counts, the method and objective, the data rows kept and dropped
per reason, the batch geometry, tokens per step, the steps and the epochs they make, and for
pretraining whether the token stream wraps around (samples repeat).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..fileio import write_json_atomic

PREFLIGHT_NAME = "preflight.json"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_schedule(lr: Optional[float], min_lr: Optional[float]) -> None:
    """The cosine decays from lr to min_lr: an end above the start is a mistake, not a schedule.
    (Each option's own range, and the device, are checked by `options.resolve`.)"""
    if lr is not None and min_lr is not None and min_lr > lr:
        raise ConfigError(f"--min-lr {min_lr:g} is above --lr {lr:g}",
                          hint="the cosine schedule decays from --lr down to --min-lr")


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
