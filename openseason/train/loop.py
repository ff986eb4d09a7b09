"""The one training loop: every finetuning method and pretraining pass through `train()`.

    train(model, data, TrainConfig(...), out_dir, ...)

`model` is a GPT already adapted by `openseason.peft.apply` (whatever is trainable trains); `data`
is any source of micro-batches with the small protocol below, so SFT and pretraining share the loop:

    data.next_batch() -> {"input_ids", "labels" (aligned, -100 = no loss) or "targets" (already
                          shifted: the token to predict at each position, as pretraining samples of
                          seq_len + 1 tokens give), optional "segment_ids",
                          "position_ids"}          LongTensors [B, T]
    data.state_dict() / data.load_state_dict(s)   the data-order position, saved with checkpoints
    data.batches_per_epoch (optional)            for `epochs`
    data.epoch (optional)

One optimizer step accumulates `grad_accum` micro-batches. The loss of each is its summed token
cross-entropy divided by the number of target tokens across the WHOLE accumulated batch, so a long
micro-batch weighs more than a short one, exactly as if the step were one big batch.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from ..errors import OpenseasonError
from .schedule import lr_at, make_optimizer
from ..checkpoint.training import (STATE_NAME, STEP_DIR, drop_optimizer_state, find_resume, load_train_checkpoint,
                                   save_train_checkpoint, step_dir)
from .interrupt import TrainingInterrupted, stop_on_signals

METRIC_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "target_tokens", "tokens_per_s",
                 "mfu", "elapsed_s", "val_loss"]


class TrainingError(OpenseasonError):
    """Training stopped (NaN loss, nothing to train, ...)."""


@dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the data (saved in every run card)."""

    max_steps: Optional[int] = None      # optimizer steps; None = from epochs
    epochs: Optional[float] = None
    max_time: Optional[float] = None     # seconds; the run saves `final` and stops when exceeded
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: Optional[float] = None       # default lr / 10
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_clip: Optional[float] = 1.0
    save_every: Optional[int] = None     # steps between step-XXXXXX checkpoints
    keep_optimizer: bool = False         # keep the optimizer state in every checkpoint, not just the newest
    catch_signals: bool = True           # SIGINT/SIGTERM: save a checkpoint at the current step, then stop
    save_at: tuple = ()                  # extra steps to checkpoint (e.g. Pythia's log-spaced schedule; 0 = init)
    keep_last: Optional[int] = None      # keep only the newest N step checkpoints (None = all)
    eval_every: Optional[int] = None     # steps between validation loss + sample generation
    log_every: int = 1
    seed: int = 1337
    device: Optional[str] = None         # default: cuda if available, else cpu
    precision: Optional[str] = None      # "bf16" (autocast) | "fp32"; default bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    compile: bool = False                # torch.compile every block and the head's loss; see compile_blocks
    loss_chunk: int = 4096               # target tokens per lm_head + cross-entropy chunk
    sample_max_new_tokens: int = 48
    flops_per_token: Optional[float] = None  # training FLOPs per token (6N + 12LHQT); with peak_flops gives MFU
    peak_flops: Optional[float] = None       # the hardware's peak FLOP/s per process (e.g. bf16 dense)
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- loss ----------------------------------------------------------------------------------------
# The objective (what a micro-batch's loss is) is a parameter of the loop; see objectives/base.py.
from .objectives.base import combine  # noqa: E402
from .objectives.sft import SFTObjective, token_loss_sum  # noqa: E402,F401 (token_loss_sum re-exported)


def compile_blocks(model) -> None:
    """torch.compile each transformer block's forward in place (parameter names, state dicts and
    checkpoints are unchanged; a forward a method replaced, as Flamingo's, is the one compiled), and
    the output head with its cross-entropy as one function (the SFT loss then fuses the [tokens, vocab]
    softmax with the head's epilogue, adapter-v2's scale included). Pieces, not the whole model: one
    graph serves every layer, the optimizer and the data path stay eager, and dynamic shapes let batches
    of any length through without recompiling. The blocks compile through a function of this model's
    own (generation.speed.compile_own), so other models in the process neither share nor crowd out its
    graphs. The first steps pay the compile (seconds to a minute)."""
    from ..generation.speed import compile_own
    from .objectives.sft import compile_head_loss

    if getattr(model, "_compiled_head_loss", None) is not None:
        return   # compiled already (a second train() on the same model)

    def block_forward(forward, *args, **kwargs):
        return forward(*args, **kwargs)
    compiled = compile_own(block_forward, dynamic=True)
    for block in model.blocks:
        block.forward = functools.partial(compiled, block.forward)
    compile_head_loss(model)


@torch.no_grad()
def evaluate_loss(model, batches: Iterable[dict], device, autocast) -> Optional[float]:
    """Mean per-token loss over `batches` (a fixed list: the same tokens every time)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with autocast():
            loss, n = token_loss_sum(model, batch)
        total += float(loss)
        count += n
    model.train(was_training)
    return total / count if count else None


@torch.no_grad()
def evaluate_objective(model, objective, batches: Iterable[dict], device, autocast) -> dict[str, float]:
    """{"val_loss", "val_<metric>" ...} of any objective over fixed `batches` (normalized over all of them)."""
    was_training = model.training
    model.eval()
    terms: dict[str, float] = {}
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for batch in batches:
        for key, value in objective.counts(batch).items():
            counts[key] = counts.get(key, 0) + int(value)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with autocast():
            part, metrics = objective.loss(model, batch)
        for key, value in part.items():
            terms[key] = terms.get(key, 0.0) + float(value)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    model.train(was_training)
    out = {"val_loss": float(combine({k: torch.tensor(v, dtype=torch.float64) for k, v in terms.items()}, counts,
                                     objective.weights))} if terms else {}
    for key, norm in objective.metric_fields.items():
        if key in sums and counts.get(norm):
            out[f"val_{key}"] = sums[key] / counts[norm]
    return out


# -- metrics ----------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.csv (one row per logged step, rewritten up to the resume step) + TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int, tensorboard: bool, fields: Iterable[str] = ()):
        self.fields = list(METRIC_FIELDS) + [f for f in fields if f not in METRIC_FIELDS]
        self.path = Path(out_dir) / "metrics.csv"
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("step") and int(r["step"]) <= resume_step]
        from ..fileio import atomic_open
        with atomic_open(self.path, "w") as handle:  # drop rows of steps that will be redone
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.fields)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)
            except Exception as exc:  # tensorboard missing or broken must not stop training
                print(f"openseason: tensorboard logging disabled ({exc})")

    def log(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in self.fields}
        self.writer.writerow(row)
        self.handle.flush()
        self.rows.append({k: str(v) for k, v in row.items()})
        if self.tb is not None:
            extra = [f for f in self.fields if f not in METRIC_FIELDS]
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", *extra):
                if row[key] not in ("", None):
                    tag = (f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}")
                    self.tb.add_scalar(tag, float(row[key]), int(row["step"]))

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


class _NoMetrics:
    """What ranks other than 0 log: nothing (rank 0 writes metrics.csv and TensorBoard)."""

    rows: list = []

    def log(self, row: dict) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def draw_loss(ax, rows: list[dict], title: str = "loss") -> bool:
    """Draw training (and validation) loss against step from metrics rows; False when there is none."""
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in ("", None)]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss") not in ("", None)]
    if not train:
        return False
    ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return True


def plot_loss(rows: list[dict], path: Path, title: str = "loss") -> Optional[Path]:
    """Training (and validation) loss against step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = draw_loss(ax, rows, title)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None


# -- the loop ---------------------------------------------------------------------------------------
def _progress(enabled: bool, total: int, start: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        disable=not (enabled and console.is_terminal))
    task = progress.add_task("train", total=total, completed=start, loss="-", tps="-")
    return progress, task


def resolve_max_steps(config: TrainConfig, data) -> int:
    """The run's optimizer steps: `max_steps`, or `epochs` over a data source that knows its epoch size."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = getattr(data, "batches_per_epoch", None)
    if config.epochs is None or not per_epoch:
        raise TrainingError("set max_steps, or epochs with a data source that knows its epoch size")
    return max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


def train(model: torch.nn.Module, data, config: TrainConfig, out_dir: str | Path, *,
          val_batches: Optional[list[dict]] = None, resume: Optional[str | Path] = None,
          base_checkpoint: Optional[str | Path] = None, tokenizer=None, tokenizer_dir: Optional[Path] = None,
          run_card: Optional[dict] = None, sample_fn: Optional[Callable[[torch.nn.Module], str]] = None,
          callbacks: Iterable[Callable[[int, dict], None]] = (), distributed=None,
          objective=None, settings: Optional[dict] = None, allow_changes: bool = False,
          summary: Optional[dict] = None) -> dict[str, Any]:
    """Train `model` on micro-batches from `data`; checkpoints go to out_dir/step-XXXXXX and out_dir/final.

    resume: None, "auto" (newest complete checkpoint under out_dir, or a fresh start) or a path.
    base_checkpoint: the full checkpoint a PEFT model stands on (PEFT checkpoints reference it).
    sample_fn(model) -> text: called at each evaluation, logged to TensorBoard and samples.txt.
    callbacks: fn(step, metrics) after every optimizer step.
    distributed: a train.distributed.DistributedRun (torchrun/FSDP2, or one process writing DCP
        checkpoints that any number of processes can resume); None = the single-process format.
    objective: what a micro-batch's loss is (train.objectives: sft, reward, dpo family, grpo, distill);
        None = SFT (token cross-entropy). Each loss term is normalized over the whole step.
    settings: what a resume must not change (train/settings.py), stored in every checkpoint; a resume
        with other values stops naming them unless `allow_changes`.
    summary: the preflight summary (train/preflight.py), printed before step 1 and kept in OUT/preflight.json.
    SIGINT / SIGTERM save OUT/step-XXXXXX at the current step and raise TrainingInterrupted.
    Returns {"final": path, "steps", "tokens", "seconds", "final_loss", "val_loss", "stopped"}; "stopped"
    is "max_steps", "max_time" or "already_done" (a resume found the run finished: nothing was trained).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = objective if objective is not None else SFTObjective(config.loss_chunk)
    extra_fields = list(objective.metric_fields)
    if objective.name != "sft":
        extra_fields += [f"val_{k}" for k in objective.metric_fields]
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if distributed is not None:
        device = distributed.device
    main_process = distributed is None or distributed.is_main
    reduce_sum = distributed.sum if distributed is not None else (lambda value: value)
    loss_scale = distributed.loss_scale() if distributed is not None else 1.0
    precision = config.precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision not in ("bf16", "fp32"):
        raise TrainingError(f"precision must be 'bf16' or 'fp32', not {precision!r}")

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model.to(device)
    model.init_rope(device=device)
    model.gradient_checkpointing = bool(config.gradient_checkpointing)
    if config.compile:
        compile_blocks(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("the model has no trainable parameters", hint="apply a method: openseason.peft.apply")
    max_steps = resolve_max_steps(config, data)
    min_lr = config.min_lr if config.min_lr is not None else config.lr / 10
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))

    step, tokens_seen, elapsed_before, last_loss = 0, 0, 0.0, None
    resume_from = find_resume(out_dir, resume)
    if resume_from is not None:
        from .distributed import DistributedRun, is_dcp_checkpoint
        from .settings import check_resume

        stored = json.loads((resume_from / STATE_NAME).read_text())
        changes = check_resume(resume_from, stored, settings, allow_changes)
        if changes and main_process:
            print("openseason: resuming with changed settings (--allow-changes):\n  " + "\n  ".join(changes),
                  file=sys.stderr)
        done = _already_done(out_dir, stored, max_steps)
        if done is not None:
            if main_process:
                print(f"openseason: nothing to train: {resume_from} is already at step {stored['step']} of "
                      f"max_steps {max_steps}; the final checkpoint is {done}", file=sys.stderr)
            return {"final": done, "steps": int(stored["step"]), "tokens": int(stored.get("tokens", 0)),
                    "seconds": float(stored.get("elapsed_s", 0.0)), "final_loss": stored.get("loss"),
                    "val_loss": None, "stopped": "already_done", "loss_plot": None,
                    "metrics": out_dir / "metrics.csv", "val_metrics": {}}
        if is_dcp_checkpoint(resume_from):
            state = (distributed or DistributedRun(device=device)).load(resume_from, model, optimizer)
        else:
            state = load_train_checkpoint(resume_from, model, optimizer, device)
        step, tokens_seen = int(state["step"]), int(state.get("tokens", 0))
        elapsed_before, last_loss = float(state.get("elapsed_s", 0.0)), state.get("loss")
        if state.get("data") is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(state["data"])
        if main_process:
            print(f"openseason: resumed from {resume_from} at step {step}")
    else:
        torch.manual_seed(config.seed)
    if summary is not None and main_process:
        from .preflight import announce

        announce(summary, out_dir)
    metrics = MetricsLog(out_dir, step, config.tensorboard, extra_fields) if main_process else _NoMetrics()
    card = {**(run_card or {}), "train_config": config.to_dict(),
            **({"preflight": summary} if summary is not None else {})}
    last_good: Optional[Path] = resume_from
    saved_step: Optional[int] = None

    def save(directory: Path, extra_state: Optional[dict] = None) -> Path:
        nonlocal saved_step
        state = {"step": step, "tokens": tokens_seen, "elapsed_s": elapsed_before + (time.time() - t_start),
                 "max_steps": max_steps, "data": data.state_dict() if hasattr(data, "state_dict") else None,
                 "loss": last_loss, "settings": settings, **(extra_state or {})}
        if distributed is not None:
            path = distributed.save(directory, model, optimizer, state, tokenizer=tokenizer,
                                    tokenizer_dir=tokenizer_dir, run_card={**card, "step": step, "tokens": tokens_seen})
        else:
            path = save_train_checkpoint(directory, model, optimizer, state, base_checkpoint=base_checkpoint,
                                         tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                                         run_card={**card, "step": step, "tokens": tokens_seen})
        if not config.keep_optimizer and main_process:
            drop_optimizer_state(out_dir, keep=path)  # only the newest checkpoint is resumed from
        saved_step = step
        return path

    t_start = time.time()
    model.train()
    if step == 0 and 0 in config.save_at:  # the initialization itself, as Pythia's step0
        save(step_dir(out_dir, 0))
    last_val, stopped = None, "max_steps"
    last_val_metrics: dict[str, float] = {}
    progress, task = _progress(config.progress and main_process, max_steps, step)
    with progress, stop_on_signals(config.catch_signals) as stop:
        while step < max_steps:
            if config.max_time is not None and elapsed_before + time.time() - t_start >= config.max_time:
                stopped = "max_time"
                break
            t0 = time.time()
            micro = [data.next_batch() for _ in range(config.grad_accum)]
            # counts over every micro-batch of the step on every process: each loss term is normalized by
            # its count (target tokens, pairs, ...) over the whole step, whatever way it is split
            counts_per = [objective.counts(b) for b in micro]
            totals = {k: int(reduce_sum(sum(c.get(k, 0) for c in counts_per)))
                      for k in dict.fromkeys(k for c in counts_per for k in c)}
            n_target = totals.get("tokens", next(iter(totals.values()), 0))
            n_tokens = int(reduce_sum(sum(int(b["input_ids"].numel()) for b in micro)))
            loss_total = 0.0
            metric_sums: dict[str, float] = {}
            for batch in micro:
                batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                         for k, v in batch.items()}
                with autocast():
                    terms, step_metrics = objective.loss(model, batch)
                loss = combine(terms, totals, objective.weights)
                (loss * loss_scale).backward()
                loss_total += float(loss.detach())
                for key, value in step_metrics.items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
            loss_total = reduce_sum(loss_total)
            if not math.isfinite(loss_total):
                optimizer.zero_grad(set_to_none=True)
                metrics.close()
                hint = (f"the last good checkpoint is {last_good}; resume from it with a lower learning rate "
                        "(--lr) or more warmup" if last_good else "no checkpoint was written yet; lower --lr")
                raise TrainingError(f"loss is {loss_total} at step {step + 1}; training stopped", hint=hint)
            lr = lr_at(step, lr=config.lr, warmup_steps=config.warmup_steps, max_steps=max_steps, min_lr=min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            params = [p for g in optimizer.param_groups for p in g["params"]]
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.grad_clip) if config.grad_clip
                         else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n_tokens
            dt = max(time.time() - t0, 1e-9)
            last_loss = loss_total
            row = {"step": step, "epoch": getattr(data, "epoch", ""), "loss": f"{loss_total:.6f}", "lr": f"{lr:.3e}",
                   "grad_norm": f"{float(grad_norm):.4f}", "tokens": tokens_seen, "target_tokens": n_target,
                   "tokens_per_s": f"{n_tokens / dt:.1f}",
                   "mfu": (f"{n_tokens / dt * config.flops_per_token / (config.peak_flops * (distributed.world_size if distributed else 1)):.4f}"
                           if config.flops_per_token and config.peak_flops else ""),
                   "elapsed_s": f"{elapsed_before + time.time() - t_start:.2f}"}
            for key, norm in objective.metric_fields.items():
                if key in metric_sums and totals.get(norm):
                    row[key] = f"{reduce_sum(metric_sums[key]) / totals[norm]:.6f}"
            if config.eval_every and (step % config.eval_every == 0 or step == max_steps):
                if val_batches and distributed is None:
                    if objective.name == "sft":
                        last_val = evaluate_loss(model, val_batches, device, autocast)
                    else:
                        val = evaluate_objective(model, objective, val_batches, device, autocast)
                        last_val = val.pop("val_loss", None)
                        row.update({k: f"{v:.6f}" for k, v in val.items()})
                        last_val_metrics.update(val)
                    row["val_loss"] = f"{last_val:.6f}" if last_val is not None else ""
                if sample_fn is not None and distributed is None:
                    was_training = model.training
                    model.eval()
                    with torch.no_grad(), autocast():
                        text = sample_fn(model)
                    model.train(was_training)
                    metrics.text("sample", text, step)
                    with open(out_dir / "samples.txt", "a") as handle:
                        handle.write(f"--- step {step}\n{text}\n")
            if step % max(1, config.log_every) == 0 or "val_loss" in row or step == max_steps:
                metrics.log(row)
            progress.update(task, completed=step, loss=f"{loss_total:.4f}", tps=f"{n_tokens / dt:,.0f}")
            if (main_process and not progress.live.is_started and config.progress
                    and step % max(1, config.log_every) == 0):
                val = f" val {row['val_loss']}" if row.get("val_loss") else ""
                mfu = f" MFU {float(row['mfu']):.1%}" if row.get("mfu") else ""
                print(f"step {step}/{max_steps} loss {loss_total:.4f}{val} lr {lr:.2e} "
                      f"{n_tokens / dt:,.0f} tok/s{mfu}", flush=True)
            if ((config.save_every and step % config.save_every == 0) or step in config.save_at) and step < max_steps:
                last_good = save(step_dir(out_dir, step))
                _prune(out_dir, config.keep_last)
            for callback in callbacks:
                callback(step, row)
            if stop.requested(distributed):
                import signal as _signal

                path = save(step_dir(out_dir, step)) if saved_step != step else last_good
                metrics.close()
                raise TrainingInterrupted(stop.signum or _signal.SIGTERM, step, path)
    final = save(out_dir / "final", {"stopped": stopped})
    if config.save_every and step % config.save_every == 0:
        # the last step's checkpoint is the final one; keep a step-XXXXXX too for `--resume auto`
        save(step_dir(out_dir, step))
        _prune(out_dir, config.keep_last)
    seconds = elapsed_before + time.time() - t_start
    metrics.close()
    plot = (plot_loss(metrics.rows, out_dir / "loss.png", title=(run_card or {}).get("title", "loss"))
            if config.plot and main_process else None)
    return {"final": final, "steps": step, "tokens": tokens_seen, "seconds": seconds, "final_loss": last_loss,
            "val_loss": last_val, "stopped": stopped, "loss_plot": plot, "metrics": out_dir / "metrics.csv",
            "val_metrics": last_val_metrics}


def _already_done(out_dir: Path, stored: dict, max_steps: int) -> Optional[Path]:
    """The final checkpoint of a run a resume found already at max_steps (None: there is work to do)."""
    if int(stored["step"]) < max_steps:
        return None
    final = out_dir / "final"
    try:
        same = json.loads((final / STATE_NAME).read_text())["step"] == stored["step"]
    except (OSError, ValueError, KeyError):
        return None  # no final at that step yet: the loop writes it without training
    return final if same else None


def register_run(final: Path, *, base_model: Optional[str], datasets: list[str], method: str, seconds: float,
                 tokens: int, device: torch.device | str = "cpu", world_size: int = 1) -> None:
    """Record a finished run in the catalog (lineage for `catalog can-use`); never lose a run over it:
    the checkpoint is already safely on disk, so a catalog failure is a warning."""
    import warnings

    from ..catalog import register_checkpoint

    try:
        device = torch.device(device)
        hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        if world_size > 1:
            hardware = f"{world_size} x {hardware}"
        register_checkpoint(final, base_model=base_model, datasets=datasets, method=method, hardware=hardware,
                            seconds=seconds, tokens=tokens)
    except Exception as exc:
        warnings.warn(f"could not register {final} in the catalog: {exc}")


def _prune(out_dir: Path, keep_last: Optional[int]) -> None:
    if not keep_last:
        return
    import shutil

    steps = sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
