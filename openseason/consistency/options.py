"""One source of truth for the options of `train_consistency()` and `openseason consistency train`.

Each field is an option: its default and its documentation (the CLI flag `--max-steps` is built
from `max_steps`, its help from the doc). `None` means "the method's default" (METHOD_DEFAULTS),
resolved in one place: `resolve_options`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from ..options import option
from .losses import METRICS

METHODS = ("ct", "cd", "ict", "edm")

# Per-method defaults: CT and CD from Song et al. 2023 (Appendix C, Table 3), iCT from Song &
# Dhariwal 2023 (Sec. 3); edm is the EDM denoiser that CD distills (Karras et al. 2022).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ct": {"metric": "l2", "s0": 2, "s1": 150, "lr": 4e-4},
    "cd": {"metric": "l2", "lr": 4e-4},
    "ict": {"metric": "pseudo-huber", "s0": 10, "s1": 1280, "lr": 4e-4},
    "edm": {"lr": 4e-4},
}
_ONLY = {"s0": ("ct", "ict"), "s1": ("ct", "ict"), "mu0": ("ct",), "cd_steps": ("cd",), "cd_mu": ("cd",),
         "teacher": ("cd",), "p_mean": ("ict",), "p_std": ("ict",), "metric": ("ct", "cd", "ict")}


@dataclass
class ConsistencyOptions:
    """Options of consistency training (see each field's doc)."""

    method: str = option("ct", "ct (consistency training), cd (distillation from --teacher), ict (improved CT: "
                               "pseudo-Huber, lognormal noise, doubling curriculum, no EMA teacher), or edm "
                               "(train the diffusion teacher that cd distills)", choices=METHODS)
    teacher: Optional[str] = option(None, "cd: a run directory trained with --method edm")
    max_steps: int = option(2000, "optimizer steps (K of the schedules)")
    batch_size: int = option(128, "images per step", group="optimization")
    lr: Optional[float] = option(None, "Adam learning rate (default 4e-4, the paper's CIFAR-10 value)",
                                 group="optimization")
    grad_clip: Optional[float] = option(None, "clip the gradient norm to this (default: no clipping)",
                                        group="optimization")
    metric: Optional[str] = option(None, "distance d: l2, l1 or pseudo-huber (default l2; ict: pseudo-huber)",
                                   group="consistency", choices=METRICS)
    s0: Optional[int] = option(None, "initial discretization steps (ct 2, ict 10)", group="consistency")
    s1: Optional[int] = option(None, "final discretization steps (ct 150, ict 1280)", group="consistency")
    mu0: float = option(0.9, "ct: target EMA decay at the start, mu(k) = exp(s0 log mu0 / N(k))",
                        group="consistency")
    cd_steps: int = option(18, "cd: discretization steps N (fixed)", group="consistency")
    cd_mu: float = option(0.95, "cd: target EMA decay (fixed)", group="consistency")
    p_mean: float = option(-1.1, "ict: lognormal noise sampling mean of log sigma", group="consistency")
    p_std: float = option(2.0, "ict: lognormal noise sampling std of log sigma", group="consistency")
    ema_rate: float = option(0.999, "EMA of the weights used for sampling", group="consistency")
    image_size: Optional[int] = option(None, "resize images to this square size (default: as loaded; "
                                             "folders: the first image's width)", group="data")
    channels: Optional[int] = option(None, "1 (grey) or 3 (RGB); folders default to 3", group="data")
    limit: Optional[int] = option(None, "use only the first N images", group="data")
    base: int = option(32, "U-Net channels at full resolution", group="model")
    mults: str = option("1,2", "U-Net channel multipliers per level (comma list)", group="model")
    dropout: float = option(0.0, "U-Net dropout", group="model")
    seed: int = option(0, "seed of initialization, data order and noise")
    save_every: Optional[int] = option(500, "write OUT/step-XXXXXX every K steps (resume points)")
    keep_last: Optional[int] = option(2, "keep only the newest N step checkpoints (0 = all)")
    sample_every: Optional[int] = option(500, "write OUT/samples/step-XXXXXX.png every K steps (0 = never)")
    log_every: int = option(10, "steps between metrics.csv rows")
    device: Optional[str] = option(None, "cpu, cuda (default: cuda if available)")
    tensorboard: bool = option(True, "also log to OUT/tensorboard")
    progress: bool = option(True, "progress bar / log lines on stderr")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_options(given: dict[str, Any]) -> ConsistencyOptions:
    """defaults < the method's defaults < given (None = not given); unknown or inapplicable options
    and bad values are ConfigErrors."""
    names = {f.name for f in dataclasses.fields(ConsistencyOptions)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(f"unknown consistency options {unknown}", hint=f"valid: {', '.join(sorted(names))}")
    method = given.get("method") or "ct"
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    for name, methods in _ONLY.items():
        if given.get(name) is not None and method not in methods:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to --method {method}",
                              hint=f"it applies to: {', '.join(methods)}")
    values = {**METHOD_DEFAULTS[method], **{k: v for k, v in given.items() if v is not None}, "method": method}
    opts = ConsistencyOptions(**values)
    if opts.metric is not None and opts.metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, not {opts.metric!r}")
    for name in ("max_steps", "batch_size", "base", "log_every", "cd_steps"):
        if int(getattr(opts, name)) < 1 and not (name == "cd_steps" and method != "cd"):
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(opts, name)}")
    if method in ("ct", "ict") and not (1 <= opts.s0 <= opts.s1):
        raise ConfigError(f"need 1 <= s0 <= s1, got s0={opts.s0}, s1={opts.s1}")
    if method == "cd" and opts.cd_steps < 2:
        raise ConfigError("--cd-steps must be at least 2")
    for name in ("mu0", "cd_mu", "ema_rate"):
        if not 0.0 <= getattr(opts, name) < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), not {getattr(opts, name)}")
    if not opts.lr or opts.lr <= 0:
        raise ConfigError(f"--lr must be positive, not {opts.lr}")
    if method == "cd" and not opts.teacher:
        raise ConfigError("--method cd needs --teacher RUN, a run trained with --method edm",
                          hint="openseason consistency train --data D --method edm --out TEACHER")
    try:
        mults = tuple(int(m) for m in str(opts.mults).split(","))
    except ValueError:
        raise ConfigError(f"--mults must be a comma list of integers, not {opts.mults!r}") from None
    if not mults or min(mults) < 1:
        raise ConfigError(f"--mults must be positive integers, not {opts.mults!r}")
    if opts.channels is not None and opts.channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3, not {opts.channels}")
    return opts
