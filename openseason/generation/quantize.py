"""Weight-only quantization for faster CPU decoding: int8 (per-output-channel symmetric) and bf16.

Batch-1 decoding streams every weight matrix from memory once per token, so fewer bytes per weight
means more tokens per second. `quantize_int8(model)` replaces every nn.Linear with an `Int8Linear`
that keeps int8 weights and one scale per output row (scale = max|row| / 127); `quantize_bf16(model)`
with a `BF16Linear` that keeps bf16 weights. Embeddings, norms, the residual stream, attention and the
KV cache stay in the model's dtype (fp32), so only the matrix products see the rounding.

Int8 matmul path. Dequantizing the weight on every call (w.float() * scale) allocates a full fp32
copy and measured 3-5x slower than plain fp32 on our CPU. torch's CPU kernel `_weight_int8pack_mm`
reads the int8 weight directly; it is fast with a bf16 activation (2.5-3.5x faster than fp32 for
Pythia-70m's matrices at batch 1, one thread) and slow with an fp32 one, so the activation is cast
to bf16 for the product and the result back to fp32. Decoding (1-16 rows, fp32 activations) goes
instead to our own kernel where it builds (generation.cpu_kernels: the activation stays fp32,
1.1-1.4x faster than int8pack; prepare_for_decoding switches it on, and does the same for bf16
layers, whose torch product is compute-bound at one row). Where neither is available (old
torch, other devices) the layer falls back to dequantizing (correct, not faster). The modules are for inference:
a quantized model is not saved, trained or given PEFT methods.

`quantize(model, "int8-dynamic")` also quantizes the activations: int8 weights (the same per-row
symmetric rounding) and, on every call, each activation row to int8 with a scale of its own (max|x| /
127), multiplied in integer arithmetic: int32 sums, one rescale per output. That is the kind of
product llama.cpp's q8_0 and CTranslate2's int8 compute (both quantize activations too). It runs in
our AVX-512 VNNI kernel (generation.cpu_kernels: four byte products per 32-bit lane per instruction,
traceable by torch.compile) and, where that kernel is not built, in torch ops doing the same
arithmetic (slower). Its error and perplexity change are in BENCHMARKS.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..linear import Linear, linear

__all__ = ["Int8Linear", "Int8DynamicLinear", "BF16Linear", "quantize_int8", "quantize_bf16", "quantize",
           "QUANTIZE_MODES"]

QUANTIZE_MODES = ("int8", "int8-dynamic", "bf16")


def _int8pack_works(device: torch.device) -> bool:
    if device.type != "cpu" or not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        w = torch.ones(8, 32, dtype=torch.int8)
        out = torch._weight_int8pack_mm(torch.ones(1, 32, dtype=torch.bfloat16), w,
                                        torch.ones(8, dtype=torch.bfloat16))
        return bool(torch.all(out == 32))
    except (RuntimeError, NotImplementedError):
        return False


class Int8Linear(nn.Module):
    """y = x @ (q * scale[:, None]).T + bias, with q int8 [out, in] and scale [out]."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # "int8pack": torch's int8 x bf16 kernel; "dequantize": the fallback; "openseason": our CPU kernel
        # (generation.cpu_kernels: fp32 activations, 1-16 rows; more go to int8pack inside it), set by
        # prepare_for_decoding where it builds.
        # torch 2.13's int8pack kernel crashes (SIGSEGV) on several rows when in_features is not a
        # multiple of 16; such layers dequantize.
        self.kernel = ("int8pack" if self.in_features % 16 == 0 and _int8pack_works(qweight.device)
                       else "dequantize")

    @staticmethod
    def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric per-row int8: (q, scale) with |q| <= 127 and weight ~= q * scale[:, None]."""
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return q.contiguous(), scale

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = cls.quantize_weight(linear.weight)
        return cls(q, scale, linear.bias)

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "openseason" and x.dtype == torch.float32:
            return torch.ops.openseason.decode_linear_int8(x, self.qweight, self.scale, self.bias)
        if self.kernel == "int8pack":
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch._weight_int8pack_mm(flat, self.qweight, self.scale_bf16)
            y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            y = linear(x, self.dequantized_weight(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={self.kernel}")


class Int8DynamicLinear(nn.Module):
    """int8 weights and int8 activations (each row quantized per call); see the module docstring."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = Int8Linear.quantize_weight(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("qweight_sum", q.sum(dim=1, dtype=torch.int32))   # the kernel's +128 bias
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        # "openseason": our VNNI kernel (generation.cpu_kernels); "torch": the same arithmetic in torch ops
        from . import cpu_kernels

        self.kernel = "openseason" if cpu_kernels.available() else "torch"

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 [out, in], scale [out])."""
        return self.qweight, self.scale

    @staticmethod
    def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(xq, scale): each row of the 2-D fp32 `x` rounded to int8 with scale max|row| / 127 (1 for a
        zero row), as the kernel does it (times 1 / scale, round half to even)."""
        amax = x.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        return torch.round(x * (1.0 / scale)[:, None]).clamp(-127, 127), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "openseason":
            return torch.ops.openseason.decode_linear_int8_dynamic(x, self.qweight, self.scale, self.qweight_sum,
                                                                  self.bias)
        flat = x.reshape(-1, self.in_features).float()
        xq, xscale = self.quantize_rows(flat)
        # products of integers summed in fp32: exact while |sum| < 2^24, as the kernel's int32 sums
        y = (xq @ self.qweight.float().t()) * xscale[:, None] * self.scale
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={self.kernel}")


def _check_dynamic_int8(model: nn.Module) -> None:
    from ..errors import OpenseasonError

    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise OpenseasonError(f"int8-dynamic quantization runs on the CPU only; the model is on {sorted(devices)}",
                              hint="load it with device='cpu', or use 'int8' / 'bf16' (weight-only)")


class BF16Linear(nn.Module):
    """bf16 weight; the activation is cast to bf16 for the product and the result back."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        # "torch": torch's bf16 product; "openseason": our kernels (generation.cpu_kernels) for a few fp32
        # rows against the weight as prepare_for_decoding stores it, the same arithmetic otherwise
        self.kernel = "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "openseason":
            return torch.ops.openseason.decode_linear_bf16(x, self.weight, self.bias)
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _replace_linears(model: nn.Module, make) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, Linear):
                # in the mode of the layer it replaces: a new module starts in training mode, and a
                # model already in eval() would otherwise change when eval() is called again (after a
                # decode step was compiled ahead of time, that drops the step)
                setattr(parent, name, make(child).train(child.training))
                count += 1
    return count


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) with an Int8Linear; returns the model."""
    with torch.no_grad():
        model.quantized_linears = _replace_linears(model, Int8Linear.from_linear)
    model.quantization = "int8"
    return model


def quantize_bf16(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) with a BF16Linear; returns the model."""
    with torch.no_grad():
        model.quantized_linears = _replace_linears(model, BF16Linear)
    model.quantization = "bf16"
    return model


def quantize_int8_dynamic(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) with an Int8DynamicLinear; returns the model."""
    _check_dynamic_int8(model)
    with torch.no_grad():
        model.quantized_linears = _replace_linears(model, Int8DynamicLinear)
    model.quantization = "int8-dynamic"
    return model


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """`mode`: "int8" or "bf16" (weight-only), or "int8-dynamic" (int8 weights and activations, CPU)."""
    from ..errors import OpenseasonError

    if mode not in QUANTIZE_MODES:
        raise OpenseasonError(f"unknown quantization {mode!r}", hint=f"use one of {', '.join(QUANTIZE_MODES)}")
    if getattr(model, "quantization", None):
        raise OpenseasonError(f"the model is already quantized ({model.quantization})")
    return {"int8": quantize_int8, "int8-dynamic": quantize_int8_dynamic, "bf16": quantize_bf16}[mode](model)
