"""Sampling: the consistency model's one-step and multistep sampler, the teacher's Heun sampler, and
image grids as PNG.

Multistep consistency sampling is the paper's Algorithm 1 (stochastic iterative sampler): start at
x ~ N(0, sigma_max^2 I), denoise in one evaluation, then for each further time point tau add fresh
noise of level sqrt(tau^2 - eps^2) and denoise again. Its arithmetic is `cm_step`, which matches
`diffusers.CMStochasticIterativeScheduler.step` (tests/consistency/test_sampler_parity.py).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence

import torch

from .params import NoiseSpec, consistency_scalings, karras_sigma_at, karras_sigmas

# Default time points (indices down a 40-point Karras grid, 0 = sigma_max), the convention of the
# paper's code (`--ts 0,22,39` with `--steps 40` for two steps) and of diffusers' `timesteps`.
GRID_POINTS = 40
DEFAULT_TIME_POINTS = {1: (0,), 2: (0, 22), 3: (0, 14, 27), 4: (0, 10, 20, 30)}


def default_sigmas(steps: int, spec: NoiseSpec = NoiseSpec(), grid: int = GRID_POINTS) -> list[float]:
    """The noise levels of each evaluation for `steps`-step sampling (first = sigma_max)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    points = DEFAULT_TIME_POINTS.get(steps) or tuple(round(i * (grid - 1) / steps) for i in range(steps))
    return [karras_sigma_at(i, grid, spec) for i in points]


def cm_step(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
            noise: torch.Tensor, spec: NoiseSpec = NoiseSpec(), clip: bool = True) -> torch.Tensor:
    """One step of the stochastic iterative sampler from the raw network output F at level `sigma`:
    denoise with the boundary-condition scalings, clip to [-1, 1], re-noise to `sigma_next`
    (clamped to [eps, T]; eps adds nothing)."""
    c_skip, c_out, _ = consistency_scalings(sigma, spec)
    denoised = c_out * model_output + c_skip * sample
    if clip:
        denoised = denoised.clamp(-1, 1)
    sigma_hat = sigma_next.clamp(min=spec.sigma_min, max=spec.sigma_max)
    return denoised + noise * (sigma_hat ** 2 - spec.sigma_min ** 2) ** 0.5


@torch.no_grad()
def consistency_sample(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: Sequence[int],
                       sigmas: Sequence[float], spec: NoiseSpec = NoiseSpec(),
                       generator: Optional[torch.Generator] = None, clip: bool = True,
                       device="cpu") -> torch.Tensor:
    """Algorithm 1 with time points `sigmas` (descending, the first normally sigma_max): one network
    evaluation per entry. `f(x, sigma)` is the consistency function. Noise is drawn from `generator`
    in diffusers' order (initial noise, then one draw after every evaluation when there are several)."""
    sigmas = [float(s) for s in sigmas]
    if not sigmas:
        raise ValueError("at least one time point is needed")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"time points must be strictly decreasing: {sigmas}")
    if any(not (spec.sigma_min <= s <= spec.sigma_max) for s in sigmas):
        raise ValueError(f"time points must lie in [{spec.sigma_min}, {spec.sigma_max}]: {sigmas}")
    levels = torch.tensor(sigmas + [spec.sigma_min], dtype=torch.float32)
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device) * levels[0].item()
    for i in range(len(sigmas)):
        sigma = levels[i].to(device)
        denoised = f(x, sigma)
        if clip:
            denoised = denoised.clamp(-1, 1)
        if len(sigmas) > 1:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device)
        else:
            noise = torch.zeros_like(x)
        sigma_hat = levels[i + 1].clamp(min=spec.sigma_min, max=spec.sigma_max).to(device)
        x = denoised + noise * (sigma_hat ** 2 - spec.sigma_min ** 2) ** 0.5
    return x


def heun_step(denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Heun (2nd order) step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from
    `sigma` to `sigma_next` ([B] tensors, sigma_next > 0): the ODE solver of consistency distillation."""
    view = (-1,) + (1,) * (x.ndim - 1)
    s, sn = sigma.view(view), sigma_next.view(view)
    d = (x - denoiser(x, sigma)) / s
    x_euler = x + (sn - s) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next)) / sn
    return x + (sn - s) * (d + d_next) / 2


@torch.no_grad()
def heun_sample(denoiser, shape: Sequence[int], steps: int, spec: NoiseSpec = NoiseSpec(),
                generator: Optional[torch.Generator] = None, device="cpu") -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1): `steps` Karras levels from
    sigma_max to sigma_min, then 0; Heun between levels, Euler for the last step to 0. 2 steps - 1
    network evaluations; 1 step is a single denoising of pure noise."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    levels = (torch.tensor([spec.sigma_max], dtype=torch.float64) if steps == 1
              else karras_sigmas(steps, spec).flip(0))
    levels = torch.cat([levels, torch.zeros(1, dtype=torch.float64)]).float()
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device) * levels[0].item()
    b = x.shape[0]
    for i in range(steps):
        s, sn = levels[i].to(device).expand(b), levels[i + 1].to(device).expand(b)
        if float(levels[i + 1]) > 0:
            x = heun_step(denoiser, x, s, sn)
        else:
            x = denoiser(x, s)  # Euler to sigma = 0 lands exactly on D(x, sigma)
    return x.clamp(-1, 1)


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, scale: Optional[int] = None):
    """A PIL image tiling [N, C, H, W] images in [-1, 1] (nearest-neighbour upscaled when small)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    scale = scale or max(1, 32 // max(h, w))
    pad = 1
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[i]
    arr = (grid * 255).round().to(torch.uint8)
    arr = arr[0].numpy() if c == 1 else arr.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: Optional[int] = None) -> str:
    """Write `images` as one PNG grid, atomically."""
    from ..fileio import atomic_open

    img = image_grid(images, nrow)
    with atomic_open(path, "wb") as handle:
        img.save(handle, format="PNG")
    return str(path)
