"""`openseason vision train-clip`: train a small CLIP on image-caption pairs (the synthetic suite's
caption records), evaluate zero-shot classification on held-out images, save the image tower as a
vision checkpoint.

    OUT/step-XXXXXX/, OUT/final/    clip.safetensors (both towers, temperature), optimizer.safetensors
                                    (AdamW, RNG), trainer_state.json (step, data generator, options, vocab)
    OUT/encoder/                    the image tower: a vision checkpoint (`--vision OUT/encoder`)
    OUT/report.json                 zero-shot accuracy per family and task, with chance, and losses
    OUT/metrics.csv, OUT/loss.png

Its own small loop (like consistency/): two towers and a contrastive loss do not fit the LM loop.
Resume (`--resume auto`) restores weights, AdamW, the data-order generator and torch's RNG, so a
run killed and resumed continues exactly where it stopped.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint.training import (STATE_NAME, find_resume, optimizer_tensors, restore_optimizer, rng_state,
                                   set_rng_state, step_dir)
from ..data.records import image_paths, resolve_image_path
from ..errors import ConfigError, DataError
from ..fileio import (atomic_open, io_error, iter_jsonl, lock_directory, refuse_non_empty, replace_dir, staging_dir,
                      write_json_atomic)
from ..options import option
from .checkpoint import save_vision_encoder
from .clip_model import CLIP, TextConfig, TextTower, WordTokenizer, contrastive_loss
from .config import NAMED, VisionConfig
from .encoder import VisionEncoder

WEIGHTS = "clip.safetensors"
OPTIMIZER = "optimizer.safetensors"
OUR_FILES = ("final", "encoder", "report.json", "metrics.csv", "loss.png")


@dataclass
class CLIPOptions:
    """Options of `train_clip()` and `openseason vision train-clip`."""

    max_steps: int = option(600, "optimizer steps")
    batch_size: int = option(128, "image-caption pairs per step", group="optimization")
    lr: float = option(2e-3, "AdamW peak learning rate (linear warmup, cosine decay to 0)", group="optimization")
    warmup_steps: int = option(30, "linear warmup steps", group="optimization")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not norms, biases, embeddings)",
                                 group="optimization")
    vision: str = option("tiny-clip-vit", "named image tower shape (VisionConfig.named)", group="model",
                         choices=tuple(k for k, v in NAMED.items() if v["vit"].get("projection_dim") and
                                       "qformer" not in v))
    text_width: int = option(64, "text tower width", group="model")
    text_layers: int = option(2, "text tower blocks", group="model")
    context_length: int = option(16, "text tokens per caption (with start and end)", group="model")
    seed: int = option(0, "seed of initialization and data order")
    save_every: int = option(200, "write OUT/step-XXXXXX every K steps (resume points; 0 = never)")
    keep_last: int = option(2, "keep only the newest N step checkpoints (0 = all)")
    log_every: int = option(10, "steps between metrics.csv rows")
    device: Optional[str] = option(None, "cpu, cuda (default: cuda if available)")
    progress: bool = option(True, "progress lines on stderr (the API's progress=False silences them)")


def resolve_clip_options(given: dict[str, Any]) -> CLIPOptions:
    names = {f.name for f in dataclasses.fields(CLIPOptions)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(f"unknown train-clip options {unknown}", hint=f"valid: {', '.join(sorted(names))}")
    opts = CLIPOptions(**{k: v for k, v in given.items() if v is not None})
    for name in ("max_steps", "batch_size", "text_width", "text_layers", "log_every"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(opts, name)}")
    if opts.batch_size < 2:
        raise ConfigError("--batch-size must be at least 2 (a contrastive batch needs negatives)")
    if opts.lr <= 0:
        raise ConfigError(f"--lr must be positive, not {opts.lr}")
    if opts.vision not in NAMED:
        raise ConfigError(f"unknown --vision {opts.vision!r}; known: {', '.join(NAMED)}")
    return opts


# -- data ---------------------------------------------------------------------------------------------
def caption_rows(directory: Path) -> list[dict]:
    """Caption records of a prepared directory: one image part, meta.task == "caption"; each row
    gets "image" (the resolved file) and "caption"."""
    from ..data.prepare import check_prepared

    check_prepared(directory)
    rows = []
    for _line, row in iter_jsonl(directory / "conversations.jsonl"):
        meta = row.get("meta") or {}
        paths = image_paths(row.get("messages") or [])
        if meta.get("task") != "caption" or len(paths) != 1:
            continue
        rows.append({"image": resolve_image_path(paths[0], directory), "caption": row["messages"][-1]["content"],
                     "family": meta.get("family"), "labels": meta.get("labels") or {}})
    if not rows:
        raise DataError("no caption records (one image, meta.task = caption)", where=str(directory / "conversations.jsonl"),
                        hint="write the suite with `openseason data images --out DIR`, or prepare COCO captions")
    return rows


def splits(data: str | Path) -> tuple[list[dict], list[dict], Path]:
    """(train rows, held-out rows) from a suite (DIR/train, DIR/eval) or one prepared directory."""
    data = Path(data)
    if not data.is_dir():
        raise DataError("data directory not found", where=str(data))
    if (data / "train").is_dir():
        held = caption_rows(data / "eval") if (data / "eval" / "conversations.jsonl").exists() else []
        return caption_rows(data / "train"), held, data
    return caption_rows(data), [], data


def pixels_of(rows: list[dict], encoder: VisionEncoder) -> torch.Tensor:
    """Every row's image, preprocessed once (the suite's images are small; they stay in memory)."""
    return encoder.preprocess([r["image"] for r in rows])


# -- zero-shot classification -------------------------------------------------------------------------
def zero_shot(model: CLIP, tokenizer: WordTokenizer, rows: list[dict], image_pixels: torch.Tensor) -> dict:
    """Accuracy per (family, task) of picking each held-out image's label among the task's classes;
    a class's text embedding is the mean of the embeddings of every caption its label appears in."""
    from ..data.image_tasks import FAMILIES, label_space

    results = {}
    with torch.no_grad():
        images = torch.cat([model.image_embeddings(image_pixels[i:i + 256]) for i in range(0, len(rows), 256)])
        by_family = defaultdict(list)
        for i, row in enumerate(rows):
            if row["family"] in FAMILIES and row["labels"]:
                by_family[row["family"]].append(i)
        for family, indices in sorted(by_family.items()):
            space = label_space(family)
            texts = model.text_embeddings(tokenizer.encode([caption for _, caption in space]))
            for task in space[0][0]:
                classes = sorted({labels[task] for labels, _ in space})
                prompts = torch.stack([texts[[j for j, (labels, _) in enumerate(space) if labels[task] == c]].mean(0)
                                       for c in classes])
                prompts = torch.nn.functional.normalize(prompts, dim=-1)
                predicted = (images[indices] @ prompts.T).argmax(1)
                truth = torch.tensor([classes.index(rows[i]["labels"][task]) for i in indices])
                results[f"{family}/{task}"] = {"accuracy": round(float((predicted == truth).float().mean()), 4),
                                               "chance": round(1 / len(classes), 4), "images": len(indices)}
    return results


# -- checkpoints --------------------------------------------------------------------------------------
def _save(directory: Path, model: CLIP, optimizer, generator: torch.Generator, state: dict) -> None:
    from safetensors.torch import save_file

    final = Path(directory)
    tmp = staging_dir(final)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        tensors, groups = optimizer_tensors(optimizer)
        rng_meta, rng_tensors = rng_state()
        save_file({**tensors, **rng_tensors, "rng.data": generator.get_state()}, str(tmp / OPTIMIZER))
        (tmp / STATE_NAME).write_text(json.dumps({**state, "optimizer_param_groups": groups, "rng": rng_meta},
                                                 indent=2) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(directory: Path, model: CLIP, optimizer, generator: torch.Generator) -> dict:
    from ..checkpoint import read_safetensors

    meta = json.loads((directory / STATE_NAME).read_text())
    model.load_state_dict(read_safetensors(directory / WEIGHTS), strict=True)
    tensors = read_safetensors(directory / OPTIMIZER)
    restore_optimizer(optimizer, tensors, meta["optimizer_param_groups"])
    set_rng_state(meta["rng"], tensors)
    generator.set_state(tensors["rng.data"])
    return meta


def _prune(out: Path, keep_last: int) -> None:
    if keep_last:
        steps = sorted(p for p in out.glob("step-*") if p.is_dir())
        for path in steps[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def _lr(opts: CLIPOptions, step: int) -> float:
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    progress = (step - opts.warmup_steps) / max(1, opts.max_steps - opts.warmup_steps)
    return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build(opts: CLIPOptions, vocab: list[str]) -> tuple[CLIP, WordTokenizer]:
    tokenizer = WordTokenizer(vocab, opts.context_length)
    vision = VisionEncoder(VisionConfig.named(opts.vision))
    text = TextTower(TextConfig(vocab_size=len(tokenizer.vocab), context_length=opts.context_length,
                                width=opts.text_width, layers=opts.text_layers,
                                projection_dim=vision.config.vit.projection_dim))
    return CLIP(vision, text), tokenizer


def _param_groups(model: CLIP, weight_decay: float) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_clip(data: str | Path, out: str | Path, *, resume: Optional[str] = None, overwrite: bool = False,
               **options) -> dict:
    """Train a small CLIP on the caption records of `data` (a suite directory from `data images`, or a
    prepared directory); returns the report (also OUT/report.json). OUT/encoder is the image tower."""
    opts = resolve_clip_options(options)
    out = Path(out)
    if resume not in (None, "auto"):
        raise ConfigError(f"--resume takes 'auto', not {resume!r}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with lock_directory(out):
            if overwrite:
                for name in OUR_FILES:
                    path = out / name
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                for path in out.glob("step-*"):
                    shutil.rmtree(path, ignore_errors=True)
            elif not resume:
                refuse_non_empty(out, False)
            return _run(data, out, opts, resume)
    except OSError as exc:
        raise io_error(exc, out) from None


def _run(data, out: Path, opts: CLIPOptions, resume: Optional[str]) -> dict:
    from ..data.image_tasks import FAMILIES, label_space

    started = time.time()
    train_rows, held_rows, data_dir = splits(data)
    texts = [r["caption"] for r in train_rows] + [c for f in FAMILIES for _, c in label_space(f)]
    vocab = sorted({w for t in texts for w in WordTokenizer.words(t)})
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(opts.seed)
    model, tokenizer = build(opts, vocab)
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(opts.seed)
    step, loss_value = 0, float("nan")
    checkpoint = find_resume(out, resume) if resume else None
    if resume and (out / "final" / STATE_NAME).exists():   # a finished run: nothing left to train
        checkpoint = out / "final"
    if checkpoint is not None:
        meta = _load(checkpoint, model, optimizer, generator)
        if meta["options"] != _fingerprint(opts) or meta["vocab"] != tokenizer.vocab:
            raise ConfigError("the run in --out was trained with other options or data; resume with the same ones",
                              where=str(checkpoint), hint="or pass --overwrite to start over")
        step, loss_value = meta["step"], meta.get("loss", float("nan"))
    pixels = pixels_of(train_rows, model.vision)
    ids = tokenizer.encode([r["caption"] for r in train_rows])
    metrics = _Metrics(out / "metrics.csv", step)
    model.train()
    while step < opts.max_steps:
        batch = torch.randperm(len(train_rows), generator=generator)[:opts.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = _lr(opts, step)
        batch_ids = ids[batch].to(device)
        same = (batch_ids[:, None, :] == batch_ids[None, :, :]).all(-1)
        loss = contrastive_loss(model.logits(pixels[batch].to(device), batch_ids), same)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if step % opts.log_every == 0 or step == opts.max_steps:
            metrics.log({"step": step, "loss": round(loss_value, 5), "lr": _lr(opts, step - 1),
                         "temperature": round(1 / float(model.logit_scale.detach().exp()), 5)})
            if opts.progress:
                import sys
                print(f"step {step}/{opts.max_steps} loss {loss_value:.4f}", file=sys.stderr)
        if opts.save_every and step % opts.save_every == 0 and step < opts.max_steps:
            _save(step_dir(out, step), model, optimizer, generator, _state(step, opts, tokenizer, loss_value))
            _prune(out, opts.keep_last)
    metrics.close()
    model.eval()
    _save(out / "final", model, optimizer, generator, _state(step, opts, tokenizer, loss_value))
    evaluation = {}
    if held_rows:
        evaluation = zero_shot(model.cpu(), tokenizer, held_rows, pixels_of(held_rows, model.vision))
    accuracies = [v["accuracy"] for v in evaluation.values()]
    report = {"data": str(data_dir), "train_pairs": len(train_rows), "heldout_images": len(held_rows),
              "steps": step, "final_loss": round(loss_value, 5), "seconds": round(time.time() - started, 1),
              "temperature": round(1 / float(model.logit_scale.detach().exp()), 5), "zero_shot": evaluation,
              "zero_shot_mean": round(sum(accuracies) / len(accuracies), 4) if accuracies else None,
              "chance_mean": round(sum(v["chance"] for v in evaluation.values()) / len(evaluation), 4)
              if evaluation else None, "options": dataclasses.asdict(opts)}
    save_vision_encoder(out / "encoder", model.vision.cpu(),
                        run_card={"trained_by": "openseason vision train-clip", "data": str(data_dir),
                                  "steps": step, "zero_shot": evaluation, "zero_shot_mean": report["zero_shot_mean"]})
    write_json_atomic(out / "report.json", report)
    _plot(metrics.rows, out / "loss.png")
    return report


def _fingerprint(opts: CLIPOptions) -> dict:
    """The options that shape the run's result (not where or how verbosely it runs)."""
    skip = {"device", "progress", "save_every", "keep_last", "log_every", "max_steps"}
    return {k: v for k, v in dataclasses.asdict(opts).items() if k not in skip}


def _state(step: int, opts: CLIPOptions, tokenizer: WordTokenizer, loss: float) -> dict:
    return {"step": step, "loss": loss, "options": _fingerprint(opts), "vocab": tokenizer.vocab,
            "context_length": tokenizer.context_length}


class _Metrics:
    """metrics.csv; on resume the rows after the resumed step are dropped (they will be redone)."""

    FIELDS = ("step", "loss", "lr", "temperature")

    def __init__(self, path: Path, resume_step: int):
        self.rows: list[dict] = []
        if path.exists() and resume_step:
            with open(path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        self.handle = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(self.rows)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _plot(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title("CLIP training")
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
