"""Consistency training (CT), distillation (CD), improved CT (iCT), and the EDM teacher: one small loop.

    train_consistency(data, out, method="ct"|"cd"|"ict"|"edm", resume=None, overwrite=False, **options)

One step (paper Algorithms 2 and 3; iCT Sec. 3):

    N = N(k)  (ct: sqrt-growth; ict: doubling; cd: fixed)       sigmas = Karras grid t_1 < ... < t_N
    n ~ U{1..N-1}  (ict: lognormal p(n))      x ~ data, z ~ N(0, I)
    x_hi = x + t_{n+1} z;  x_lo = x + t_n z  (cd: one Heun step of the teacher from x_hi to t_n)
    loss = mean lambda(n) d(f_theta(x_hi, t_{n+1}), f_target(x_lo, t_n))
           target = theta^- (EMA with mu(k); cd: fixed mu) or, for ict, stop-grad theta; lambda = 1, ict: 1/(t_{n+1} - t_n)

plus an EMA of theta for sampling. The edm method trains the denoiser D with EDM's loss (lognormal
sigma, P_mean -1.2, P_std 1.2, weight (sigma^2 + sd^2) / (sigma sd)^2).

All randomness (data order, noise, time indices) comes from one torch.Generator whose state is
saved with every checkpoint, with the model, theta^-, the EMA and Adam, so a run killed with kill -9
and resumed with `resume="auto"` ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointError, ConfigError, OpenseasonError
from ..device import check_device
from ..fileio import atomic_open, lock_directory, read_json_object, refuse_non_empty, write_json_atomic
from .checkpoint import (CONFIG_NAME, file_sha256, find_latest, load_checkpoint, prune, save_checkpoint,
                         step_dir)
from .data import load_images
from .losses import distance
from .models import ConsistencyFunction, EDMDenoiser
from .options import ConsistencyOptions, resolve_options
from .params import NoiseSpec, ct_ema_decay, ct_num_steps, ict_num_steps, karras_sigmas, lognormal_index_probs
from .sampling import consistency_sample, heun_sample, heun_step, save_grid
from .unet import UNet, UNetConfig

METRIC_FIELDS = ["step", "loss", "num_steps", "mu", "lr", "grad_norm", "images_per_s", "elapsed_s"]
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2
OUR_FILES = (CONFIG_NAME, "metrics.csv", "tensorboard", "samples", "loss.png", "final")
GRID_SEED = 1234  # sample grids during training use their own generator, never the training one


class ConsistencyTrainingError(OpenseasonError):
    """Training stopped (a NaN loss, ...)."""


def wrap(method: str, net: torch.nn.Module, spec: NoiseSpec):
    """The function a network stands for: D for the edm teacher, f for every consistency method."""
    return EDMDenoiser(net, spec) if method == "edm" else ConsistencyFunction(net, spec)


def schedule(opts: ConsistencyOptions, k: int) -> tuple[int, float]:
    """(N, mu) at step k (0-based) of K = max_steps: the discretization and the target's EMA decay."""
    if opts.method == "ct":
        return ct_num_steps(k, opts.max_steps, opts.s0, opts.s1), ct_ema_decay(k, opts.max_steps, opts.s0,
                                                                               opts.s1, opts.mu0)
    if opts.method == "ict":
        return ict_num_steps(k, opts.max_steps, opts.s0, opts.s1), 0.0
    if opts.method == "cd":
        return opts.cd_steps, opts.cd_mu
    return 0, 0.0


def load_teacher(run: str | Path, shape: tuple, device) -> tuple[EDMDenoiser, dict]:
    """The EMA denoiser of an edm run, frozen, and its fingerprint for the run card."""
    from .run import load_run

    loaded = load_run(run, device=device)
    if loaded.method != "edm":
        raise ConfigError(f"the teacher must be a run trained with --method edm, this one is {loaded.method!r}",
                          where=str(run))
    if tuple(loaded.shape) != tuple(shape):
        raise ConfigError(f"the teacher was trained on images of shape {tuple(loaded.shape)}, the data is "
                          f"{tuple(shape)}", where=str(run), hint="train the teacher on the same data")
    loaded.function.requires_grad_(False).eval()
    return loaded.function, {"path": str(Path(run).resolve()), "checkpoint": str(loaded.checkpoint),
                             "ema_sha256": file_sha256(loaded.checkpoint / "ema.safetensors")}


@torch.no_grad()
def _ema_update(target: torch.nn.Module, source: torch.nn.Module, decay: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


class _Metrics:
    """metrics.csv (rows after the resume step dropped) and TensorBoard."""

    def __init__(self, out: Path, resume_step: int, tensorboard: bool):
        self.path = out / "metrics.csv"
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("step") and int(r["step"]) <= resume_step]
        with atomic_open(self.path, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.rows = rows
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=METRIC_FIELDS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
            except Exception as exc:  # a broken tensorboard must not stop training
                print(f"openseason: tensorboard logging disabled ({exc})")

    def log(self, row: dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()
        self.rows.append({k: str(v) for k, v in row.items()})
        if self.tb is not None:
            for key in ("loss", "num_steps", "mu", "grad_norm", "images_per_s"):
                self.tb.add_scalar(f"train/{key}", float(row[key]), int(row["step"]))

    def image(self, path: Path, step: int) -> None:
        if self.tb is not None:
            import numpy as np
            from PIL import Image

            with Image.open(path) as img:
                self.tb.add_image("samples", np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def _plot_loss(rows: list[dict], path: Path, title: str) -> Optional[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*points), linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path


def _check_resume_config(out: Path, card: dict) -> None:
    path = out / CONFIG_NAME
    if not path.exists():
        return
    saved = read_json_object(path, CheckpointError)
    old, new = saved.get("options", {}), card["options"]
    ignore = {"progress", "tensorboard", "device", "sample_every", "log_every", "keep_last"}
    if card["method"] in ("edm", "cd"):  # no schedule depends on K: a run may be extended or shortened
        ignore.add("max_steps")
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff or saved.get("data") != card["data"]:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff) or "the data"
        raise ConfigError(f"resume with different options than the run was started with ({shown})",
                          where=str(path), hint="resume with the same options, or start a new --out")


def train_consistency(data: str, out: str | Path, *, resume: Optional[str] = None, overwrite: bool = False,
                      **options: Any) -> dict[str, Any]:
    """Train a consistency model (or the EDM teacher) on `data` into the run directory `out`.

    data: "digits", "fashion-mnist" or a folder of PNG/JPEG images (see consistency.data).
    resume: None (refuse a non-empty `out`) or "auto" (continue from the newest checkpoint under
        `out`, or start fresh when there is none). overwrite: replace a previous run in `out`.
    options: the fields of ConsistencyOptions (method, max_steps, batch_size, lr, metric, ...).
    Returns {"final", "steps", "seconds", "final_loss", "metrics", "loss_plot", "samples"}.
    """
    if resume not in (None, "auto"):
        raise ConfigError(f"resume must be 'auto' or not given, not {resume!r}")
    opts = resolve_options(options)
    if opts.device is not None:
        check_device(opts.device)  # before the images load or anything is written
    out = Path(out)
    images = load_images(data, opts.image_size, opts.channels, opts.limit)
    x_all = images.images
    shape = tuple(x_all.shape[1:])
    if x_all.shape[0] < 1:
        raise ConfigError("no training images", where=str(data))
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = NoiseSpec()
    unet_cfg = UNetConfig(image_size=shape[-1], channels=shape[0], base=opts.base,
                          mults=tuple(int(m) for m in opts.mults.split(",")), dropout=opts.dropout)
    if shape[-1] != shape[-2] or shape[-1] % (2 ** (len(unet_cfg.mults) - 1)):
        raise ConfigError(f"images of {shape[-2]}x{shape[-1]} do not fit a U-Net with {len(unet_cfg.mults)} levels",
                          hint="pass --image-size with a multiple of 2^(levels-1), or fewer --mults")

    with lock_directory(out):
        latest = find_latest(out) if resume == "auto" else None
        if latest is None:
            if overwrite:
                import shutil
                from .checkpoint import STEP_DIR
                for child in out.iterdir():
                    if child.name in OUR_FILES or STEP_DIR.match(child.name):
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            refuse_non_empty(out, overwrite, ignore=OUR_FILES if resume == "auto" else ())
        teacher, teacher_card = None, None
        if opts.method == "cd":
            teacher, teacher_card = load_teacher(opts.teacher, shape, device)
        card = {"format": "openseason-consistency-1", "method": opts.method, "options": opts.to_dict(),
                "unet": unet_cfg.to_dict(), "noise": spec.__dict__, "shape": list(shape),
                "data": {"source": images.source, "name": str(data), "images": int(x_all.shape[0])},
                "teacher": teacher_card}
        if latest is not None:
            _check_resume_config(out, card)
        write_json_atomic(out / CONFIG_NAME, card)

        torch.manual_seed(opts.seed)
        net = UNet(unet_cfg).to(device)
        target_net = copy.deepcopy(net).requires_grad_(False) if opts.method in ("ct", "cd") else None
        ema_net = copy.deepcopy(net).requires_grad_(False)
        optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr)
        gen = torch.Generator().manual_seed(opts.seed)
        step, elapsed_before = 0, 0.0
        if latest is not None:
            state = load_checkpoint(latest, model=net, target=target_net, ema=ema_net, optimizer=optimizer,
                                    generator=gen)
            step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
            if opts.progress:
                print(f"openseason: resumed from {latest} at step {step}", flush=True)
        f_online = wrap(opts.method, net, spec)
        f_target = wrap(opts.method, target_net, spec) if target_net is not None else None
        f_ema = wrap(opts.method, ema_net, spec)
        x_all = x_all.to(device)
        metrics = _Metrics(out, step, opts.tensorboard)
        t_start = time.time()
        samples: list[str] = []

        def elapsed() -> float:
            return elapsed_before + time.time() - t_start

        def save(directory: Path, extra: Optional[dict] = None) -> Path:
            return save_checkpoint(directory, model=net, target=target_net, ema=ema_net, optimizer=optimizer,
                                   generator=gen, state={"step": step, "elapsed_s": elapsed(),
                                                         "method": opts.method, **(extra or {})})

        def grid() -> None:
            sample_gen = torch.Generator().manual_seed(GRID_SEED)
            ema_net.eval()
            if opts.method == "edm":
                imgs = heun_sample(f_ema, (64, *shape), 18, spec, sample_gen, device)
            else:
                imgs = consistency_sample(f_ema, (64, *shape), [spec.sigma_max], spec, sample_gen, device=device)
            path = out / "samples" / f"step-{step:06d}.png"
            save_grid(imgs, path)
            metrics.image(path, step)
            samples.append(str(path))

        last_loss = None
        net.train()
        try:
            while step < opts.max_steps:
                t0 = time.time()
                num, mu = schedule(opts, step)
                loss = _loss(opts, f_online, f_target, teacher, x_all, num, gen, spec)
                if not math.isfinite(float(loss.detach())):
                    raise ConsistencyTrainingError(f"loss is {float(loss.detach())} at step {step + 1}; training stopped",
                                                   hint="lower --lr, or resume from the last checkpoint")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if opts.grad_clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), opts.grad_clip)
                else:
                    grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters() if p.grad is not None))
                optimizer.step()
                if target_net is not None:
                    _ema_update(target_net, net, mu)
                _ema_update(ema_net, net, opts.ema_rate)
                step += 1
                last_loss = float(loss.detach())
                if step % opts.log_every == 0 or step == opts.max_steps:
                    dt = max(time.time() - t0, 1e-9)
                    row = {"step": step, "loss": f"{last_loss:.6g}", "num_steps": num, "mu": f"{mu:.6f}",
                           "lr": f"{opts.lr:.3e}", "grad_norm": f"{float(grad_norm):.4f}",
                           "images_per_s": f"{opts.batch_size / dt:.1f}", "elapsed_s": f"{elapsed():.2f}"}
                    metrics.log(row)
                    if opts.progress:
                        print(f"step {step}/{opts.max_steps} loss {last_loss:.5g} N {num} mu {mu:.4f}", flush=True)
                if opts.sample_every and step % opts.sample_every == 0:
                    grid()
                if opts.save_every and step % opts.save_every == 0 and step < opts.max_steps:
                    save(step_dir(out, step))
                    prune(out, opts.keep_last)
            final = save(out / "final", {"stopped": "max_steps"})
            if opts.sample_every and not samples:
                grid()
        finally:
            metrics.close()
        plot = _plot_loss(metrics.rows, out / "loss.png", f"{opts.method} on {data}")
    return {"final": final, "steps": step, "seconds": elapsed(), "final_loss": last_loss,
            "metrics": out / "metrics.csv", "loss_plot": plot, "samples": samples}


def _loss(opts: ConsistencyOptions, f_online, f_target, teacher, x_all: torch.Tensor, num: int,
          gen: torch.Generator, spec: NoiseSpec) -> torch.Tensor:
    """The loss of one step; every random draw comes from `gen`, on the CPU, in a fixed order."""
    device = x_all.device
    b = opts.batch_size
    idx = torch.randint(0, x_all.shape[0], (b,), generator=gen)
    x = x_all[idx.to(device)]
    if opts.method == "edm":
        sigma = torch.exp(torch.randn(b, generator=gen) * EDM_P_STD + EDM_P_MEAN).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)
        denoised = f_online(x + sigma.view(-1, 1, 1, 1) * noise, sigma)
        weight = (sigma ** 2 + spec.sigma_data ** 2) / (sigma * spec.sigma_data) ** 2
        return (weight * ((denoised - x) ** 2).flatten(1).mean(1)).mean()
    sigmas = karras_sigmas(num, spec)
    if opts.method == "ict":
        n = torch.multinomial(lognormal_index_probs(sigmas, opts.p_mean, opts.p_std), b, replacement=True,
                              generator=gen)
    else:
        n = torch.randint(0, num - 1, (b,), generator=gen)
    t_lo, t_hi = sigmas[n].float().to(device), sigmas[n + 1].float().to(device)
    z = torch.randn(x.shape, generator=gen).to(device)
    x_hi = x + t_hi.view(-1, 1, 1, 1) * z
    with torch.no_grad():
        if opts.method == "cd":
            x_lo = heun_step(teacher, x_hi, t_hi, t_lo)
        else:
            x_lo = x + t_lo.view(-1, 1, 1, 1) * z
    pred = f_online(x_hi, t_hi)
    with torch.no_grad():
        target = (f_target if f_target is not None else f_online)(x_lo, t_lo)
    d = distance(pred, target, opts.metric)
    if opts.method == "ict":
        d = d / (t_hi - t_lo)
    return d.mean()
