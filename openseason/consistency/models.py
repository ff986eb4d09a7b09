"""The two functions a network F is wrapped into (composition: the same U-Net serves both):

    ConsistencyFunction   f(x, sigma) = c_skip x + c_out F(c_in x, c_noise)   (boundary condition at eps)
    EDMDenoiser           D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)   (EDM preconditioning: the teacher)

Both take x [B, C, H, W] and sigma as a float or a [B] tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .params import NoiseSpec, c_noise, consistency_scalings, edm_scalings


def _sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(float(sigma), dtype=x.dtype, device=x.device)
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma


class _Preconditioned(nn.Module):
    scalings = None

    def __init__(self, net: nn.Module, spec: NoiseSpec = NoiseSpec()):
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _sigma(sigma, x)
        c_skip, c_out, c_in = type(self).scalings(sigma, self.spec)
        view = (-1,) + (1,) * (x.ndim - 1)
        out = self.net(c_in.view(view) * x, c_noise(sigma))
        return c_skip.view(view) * x + c_out.view(view) * out


class ConsistencyFunction(_Preconditioned):
    """f_theta(x, sigma); f(x, sigma_min) == x exactly."""

    scalings = staticmethod(consistency_scalings)


class EDMDenoiser(_Preconditioned):
    """D_theta(x, sigma) ~ E[x_0 | x]: the diffusion teacher of consistency distillation."""

    scalings = staticmethod(edm_scalings)
