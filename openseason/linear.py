"""The model's linear layers, multiplied on the CPU by the faster of the two fp32 GEMM libraries inside torch.

torch sends an fp32 `F.linear` on the CPU to its BLAS, MKL on x86. MKL picks its code path by CPU
vendor: on AMD processors it runs AVX2 code even where the CPU has AVX-512 (on the AMD EPYC we measure,
its fp32 rate sits at the AVX2 peak), so there it reaches about half of what the same torch's oneDNN (also linked into every
x86 torch wheel, used there for bf16) does on the same fp32 product: 173-191 GFLOP/s vs 388-443 for
pythia-70m's training shapes, and 7.8 ms vs 3.2 ms for one row through its 50k-row output layer
(BENCHMARKS.md, "Finetuning", 2026-12-02). Same fp32 arithmetic, only another kernel and summation order.

`Linear` is an nn.Linear (same parameters, state dict and isinstance) whose forward calls `linear`,
which sends fp32 CPU products outside autocast through the op `openseason::onednn_linear` when
`fp32_gemm()` is "onednn", and everything else to F.linear (one row by a column-major weight too:
decoding's layout, which torch's matrix-vector path reads faster). The op carries its own backward (input
and weight gradients are two more oneDNN products, on transposed views: nothing is copied), and is
opaque to torch.compile, so compiled blocks call it as it is.

The library is chosen by a rule, not by timing, so every process on a machine multiplies alike (a
resumed run repeats the interrupted one bit for bit): oneDNN where torch's BLAS is MKL and the CPU is
not Intel's, torch's BLAS elsewhere. OPENSEASON_FP32_GEMM=onednn|torch overrides it; set_fp32_gemm
does from Python, before anything is compiled (torch.compile reads the choice once, as a constant).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import cpu_info
from .errors import ConfigError

ENV = "OPENSEASON_FP32_GEMM"
_choice: dict = {}


def _cpu_vendor() -> str:
    return cpu_info("vendor_id") or "unknown"


def _onednn_usable() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.compiler.assume_constant_result   # torch.compile calls it once, eagerly: no graph break
def fp32_gemm() -> str:
    """"onednn" or "torch": which library multiplies fp32 linear layers on the CPU in this process."""
    if "library" not in _choice:
        wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
        if wanted not in ("auto", "onednn", "torch"):
            raise ConfigError(f"{ENV}={wanted!r} is not one of auto, onednn, torch")
        if wanted == "auto":
            mkl = "BLAS_INFO=mkl" in torch.__config__.show()
            wanted = "onednn" if mkl and _cpu_vendor() not in ("GenuineIntel", "unknown") else "torch"
        if wanted == "onednn" and not _onednn_usable():
            wanted = "torch"   # a torch built without oneDNN (some ARM or source builds)
        _choice["library"] = wanted
    return _choice["library"]


def set_fp32_gemm(library: Optional[str]) -> None:
    """Choose the library for this process ("onednn", "torch"), or None to go back to the rule."""
    if library not in (None, "onednn", "torch"):
        raise ConfigError(f"fp32 GEMM library {library!r} is not one of onednn, torch")
    if library == "onednn" and not _onednn_usable():
        raise ConfigError("this torch was built without oneDNN (torch.backends.mkldnn.is_available() is False)")
    _choice.clear()
    if library is not None:
        _choice["library"] = library


@torch.library.custom_op("openseason::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear(x, weight, bias) by oneDNN; x, weight and bias fp32 on the CPU, any strides."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = onednn_linear(grad, weight.t(), None)                       # grad @ W
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = onednn_linear(rows.t(), x.reshape(-1, x.shape[-1]).t(), None)   # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by oneDNN for fp32 CPU products outside autocast when fp32_gemm() says so."""
    if (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0
            and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu") and fp32_gemm() == "onednn"
            # one row by a column-major weight (decoding's layout, generation.speed): torch's
            # matrix-vector path reads that at the bandwidth limit, oneDNN at up to half of it
            and not (weight.stride(0) == 1 and x.numel() == x.shape[-1])):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose product goes through `linear` (the faster fp32 GEMM library on this CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
