"""Finished (or running) run directories as models: load the EMA weights of a run and sample from it.

    load_run(RUN) -> LoadedRun(method, function, spec, shape, checkpoint, config)
    sample_run(RUN, steps=1, num=64, out="grid.png", sigmas=None, seed=0)

A consistency run (ct, cd, ict) samples with the stochastic iterative sampler in `steps` network
evaluations; an edm run (the teacher) samples with EDM's Heun sampler on `steps` noise levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file

from ..device import check_device
from ..errors import CheckpointError, ConfigError
from ..fileio import read_json_object
from .checkpoint import CONFIG_NAME, find_latest
from .params import NoiseSpec
from .sampling import consistency_sample, default_sigmas, heun_sample, save_grid
from .unet import UNet, UNetConfig

MAX_SAMPLE_STEPS = 1000
MAX_SAMPLE_NUM = 10000


@dataclass
class LoadedRun:
    method: str
    function: torch.nn.Module   # ConsistencyFunction or EDMDenoiser around the EMA network
    spec: NoiseSpec
    shape: tuple
    checkpoint: Path
    config: dict


def load_run(run: str | Path, device="cpu", weights: str = "ema") -> LoadedRun:
    """The newest checkpoint of a run directory (final, else the latest step-XXXXXX) as a model."""
    from .training import wrap

    run = Path(run)
    if not (run / CONFIG_NAME).exists():
        raise CheckpointError(f"not a consistency run directory (no {CONFIG_NAME})", where=str(run),
                              hint="pass the --out directory of `openseason consistency train`")
    config = read_json_object(run / CONFIG_NAME, CheckpointError)
    checkpoint = find_latest(run)
    if checkpoint is None:
        raise CheckpointError("the run has no checkpoint yet", where=str(run),
                              hint="wait for its first step-XXXXXX, or resume training it")
    spec = NoiseSpec(**config["noise"])
    net = UNet(UNetConfig.from_dict(config["unet"]))
    net.load_state_dict(load_file(str(checkpoint / f"{weights}.safetensors")))
    net.to(device).eval()
    return LoadedRun(config["method"], wrap(config["method"], net, spec), spec, tuple(config["shape"]),
                     checkpoint, config)


@torch.no_grad()
def generate(loaded: LoadedRun, num: int, steps: int = 1, sigmas: Optional[Sequence[float]] = None,
             seed: int = 0, device="cpu", batch: int = 500) -> torch.Tensor:
    """`num` images in [-1, 1] from a loaded run (batched; seeded)."""
    gen = torch.Generator().manual_seed(seed)
    if loaded.method != "edm" and sigmas is None:
        sigmas = default_sigmas(steps, loaded.spec)
    outs = []
    for start in range(0, num, batch):
        shape = (min(batch, num - start), *loaded.shape)
        if loaded.method == "edm":
            outs.append(heun_sample(loaded.function, shape, steps, loaded.spec, gen, device))
        else:
            outs.append(consistency_sample(loaded.function, shape, sigmas, loaded.spec, gen, device=device))
    return torch.cat(outs)


def sample_run(run: str | Path, *, steps: int = 1, num: int = 64, out: str | Path = "grid.png",
               sigmas: Optional[Sequence[float]] = None, seed: int = 0, device: Optional[str] = None) -> dict:
    """Sample `num` images from RUN in `steps` network evaluations (edm runs: Heun levels) and write
    them as one PNG grid to `out`. sigmas: the time points (first normally sigma_max; default: the
    paper's points on a 40-level Karras grid); their count must equal `steps`."""
    if not isinstance(steps, int) or not 1 <= steps <= MAX_SAMPLE_STEPS:
        raise ConfigError(f"--steps must be an integer from 1 to {MAX_SAMPLE_STEPS}, not {steps!r}")
    if not isinstance(num, int) or not 1 <= num <= MAX_SAMPLE_NUM:
        raise ConfigError(f"--num must be an integer from 1 to {MAX_SAMPLE_NUM}, not {num!r}")
    device = str(check_device(device)) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_run(run, device=device)
    if sigmas is not None:
        sigmas = [float(s) for s in sigmas]
        if loaded.method == "edm":
            raise ConfigError("--sigmas applies to consistency runs; an edm run samples on the Karras levels")
        if len(sigmas) != steps:
            raise ConfigError(f"--sigmas gives {len(sigmas)} time points for --steps {steps}",
                              hint="give one time point per step, the first normally 80")
        s = loaded.spec
        if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or not all(s.sigma_min <= v <= s.sigma_max for v in sigmas):
            raise ConfigError(f"--sigmas must decrease and lie in [{s.sigma_min}, {s.sigma_max}], got {sigmas}")
    images = generate(loaded, num, steps, sigmas, seed, device)
    save_grid(images, out)
    return {"out": str(out), "checkpoint": str(loaded.checkpoint), "method": loaded.method, "steps": steps,
            "num": num, "sigmas": None if loaded.method == "edm" else (sigmas or default_sigmas(steps, loaded.spec))}
