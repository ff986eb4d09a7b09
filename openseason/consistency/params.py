"""The numbers of consistency models: the Karras noise grid, the boundary-condition parameterization,
the EDM denoiser's preconditioning, and the training schedules of CT, CD and iCT.

Song et al. 2023, "Consistency Models" (arXiv 2303.01469), and Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models" (iCT, arXiv 2310.14189). Times are noise levels sigma
(the EDM convention t = sigma); sigma_data 0.5, sigma_min (epsilon) 0.002, sigma_max (T) 80, rho 7.

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

with c_skip(eps) = 1 and c_out(eps) = 0 exactly, so f(x, eps) = x bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


@dataclass(frozen=True)
class NoiseSpec:
    """The noise range and data scale a model is trained for (saved with every run)."""

    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    sigma_data: float = SIGMA_DATA
    rho: float = RHO


def karras_sigmas(n: int, spec: NoiseSpec = NoiseSpec(), dtype=torch.float64) -> torch.Tensor:
    """t_1 < ... < t_n on the Karras grid (paper, Sec. 5): t_i = (eps^(1/rho) + (i-1)/(n-1)
    (T^(1/rho) - eps^(1/rho)))^rho, so t_1 = sigma_min and t_n = sigma_max. Ascending."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, not {n}")
    lo, hi = spec.sigma_min ** (1 / spec.rho), spec.sigma_max ** (1 / spec.rho)
    i = torch.arange(n, dtype=torch.float64)
    sig = (lo + i / (n - 1) * (hi - lo)) ** spec.rho
    sig[0], sig[-1] = spec.sigma_min, spec.sigma_max  # exact ends (the power can be off by an ulp)
    return sig.to(dtype)


def karras_sigma_at(index: int, n: int, spec: NoiseSpec = NoiseSpec()) -> float:
    """The noise level `index` points down from sigma_max on an n-point grid (index 0 = sigma_max,
    n-1 = sigma_min): the time-point convention of the paper's code and of diffusers' `timesteps`."""
    if not 0 <= index < n:
        raise ValueError(f"time point {index} is outside a {n}-point grid")
    lo, hi = spec.sigma_min ** (1 / spec.rho), spec.sigma_max ** (1 / spec.rho)
    return float((hi + index / (n - 1) * (lo - hi)) ** spec.rho)


# -- parameterizations ------------------------------------------------------------------------------
def consistency_scalings(sigma: torch.Tensor, spec: NoiseSpec = NoiseSpec()):
    """(c_skip, c_out, c_in) of the consistency function (paper, Appendix C):
    c_skip = sd^2 / ((sigma - eps)^2 + sd^2), c_out = sd (sigma - eps) / sqrt(sd^2 + sigma^2),
    c_in = 1 / sqrt(sigma^2 + sd^2). At sigma = eps, c_skip is exactly 1 and c_out exactly 0."""
    sd, eps = spec.sigma_data, spec.sigma_min
    c_skip = sd ** 2 / ((sigma - eps) ** 2 + sd ** 2)
    c_out = (sigma - eps) * sd / (sigma ** 2 + sd ** 2) ** 0.5
    c_in = 1 / (sigma ** 2 + sd ** 2) ** 0.5
    return c_skip, c_out, c_in


def edm_scalings(sigma: torch.Tensor, spec: NoiseSpec = NoiseSpec()):
    """(c_skip, c_out, c_in) of the EDM denoiser D(x, sigma) (Karras et al. 2022, Table 1)."""
    sd = spec.sigma_data
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
    c_in = 1 / (sigma ** 2 + sd ** 2) ** 0.5
    return c_skip, c_out, c_in


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The network's time input: 1000 * 0.25 * log(sigma + 1e-44), as the paper's code and diffusers'
    `sigma_to_t` feed it."""
    return 250.0 * torch.log(sigma + 1e-44)


# -- schedules ---------------------------------------------------------------------------------------
def ct_num_steps(k: int, total: int, s0: int = 2, s1: int = 150) -> int:
    """N(k) of consistency training (paper, Appendix C):
    N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1."""
    return int(math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1)


def ct_ema_decay(k: int, total: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    """mu(k) of consistency training (paper, Appendix C): mu(k) = exp(s0 log(mu0) / N(k))."""
    return math.exp(s0 * math.log(mu0) / ct_num_steps(k, total, s0, s1))


def ict_num_steps(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of iCT's doubling curriculum (iCT, Sec. 3.4): N(k) = min(s0 2^floor(k / K'), s1) + 1 with
    K' = floor(K / (log2(floor(s1 / s0)) + 1))."""
    k_prime = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return int(min(s0 * 2 ** math.floor(k / max(k_prime, 1)), s1) + 1)


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's lognormal choice of the pair (sigma_i, sigma_{i+1}) (iCT, Sec. 3.5):
    p(i) ∝ erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean) / (sqrt 2 P_std))
    for i = 1..N-1 over an ascending grid. Returns the N-1 probabilities (float64)."""
    s = sigmas.to(torch.float64)
    cdf = torch.erf((torch.log(s) - p_mean) / (math.sqrt(2.0) * p_std))
    w = cdf[1:] - cdf[:-1]
    return w / w.sum()


def pseudo_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054 sqrt(d) for data of d dimensions (iCT, Sec. 3.3)."""
    return 0.00054 * math.sqrt(dim)
