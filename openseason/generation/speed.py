"""Making a loaded model decode fast without changing what it computes.

Batch-1 decoding multiplies one activation row by every weight matrix, so it is bound by how fast
the weights stream from memory. On the x86 CPU we measured (AMD EPYC with AVX-512, torch's MKL) the
BLAS path for a row-major [out, in] weight with a long output dimension (the 50k-row lm_head above
all) reads it at about 11 GB/s, while the same product against column-major storage ([in, out],
seen through a transposed view) reads it at about 27 GB/s: 9.5 ms vs 3.8 ms for Pythia's lm_head. `prepare_for_decoding`
re-stores such weights in place: same values, same Parameter objects and shapes, so training,
saving (save_checkpoint makes tensors contiguous) and PEFT injection are unaffected; only the memory
layout changes.

`compile_decoding` removes what is left between those matrix products: at batch 1 a small model's
step is about thirty small operations per layer (norms, rotary, cache writes, attention, residual
adds), each a separate eager dispatch of a few microseconds. It hands the decode step (one new token
per row, KV cache growing) to torch.compile with dynamic shapes, so one graph serves every batch size
and cache length, and on the CPU with inductor's C++ wrapper, so a step makes no Python calls per
operation. Prefill (many tokens at once, matrix-bound) stays eager. See BENCHMARKS.md for the speed-up.
"""
from __future__ import annotations

import itertools
import time
import types

import torch
import torch.nn as nn

from ..errors import OpenseasonError
from ..linear import fp32_gemm, linear


def _relayout_linear(module: nn.Linear, every_shape: bool) -> bool:
    weight = module.weight
    # fp32 only: for bf16 the two layouts measured alike, and for fp16 the column-major path was 13x slower.
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2
            or not weight.is_contiguous()):
        return False
    out_features, in_features = weight.shape
    # Measured on an AMD EPYC (AVX-512, MKL) container: for torch's products column-major wins when
    # out > in (qkv, MLP up, lm_head), loses slightly for the down projection (out < in), ties for square
    # matrices. Our kernels (every_shape) want every weight column-major: at batch 8 they multiply
    # pythia-70m's down projections 1.05-1.4x faster than torch on row-major, and batch 1 stays with
    # torch, 3-9% slower on those two shapes column-major (under 1% of a step).
    if out_features <= in_features and not every_shape:
        return False
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t()
    return True


def _decode_kernel_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # Training through a decoding-prepared model still gets autograd: the kernels have none.
    if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return linear(x, self.weight, self.bias)
    return torch.ops.openseason.decode_linear(x, self.weight, self.bias, fp32_gemm() == "onednn")


def prepare_for_decoding(model: nn.Module) -> int:
    """Re-store fp32 CPU linear weights in the layout that batch-1 decoding reads fastest, and, where
    our CPU kernels build (generation.cpu_kernels), route those layers and int8 weight-only layers
    through them (fp32 for batches of 2-8 rows, int8 for 1-16); returns how many weights were re-stored. Idempotent; a
    no-op on GPUs. Tied weights (lm_head = embed) are left alone so the embedding lookup keeps its
    row-major rows."""
    if getattr(model, "_decode_layout", False):
        return 0
    from . import cpu_kernels
    from .quantize import Int8Linear

    tied = set()
    embed = getattr(model, "embed", None)
    if embed is not None:
        tied.add(id(embed.weight))
    on_cpu = any(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))
    kernels = on_cpu and cpu_kernels.available()
    changed = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in tied and _relayout_linear(module, kernels):
            changed.append(module)
    if kernels:
        for module in changed:
            module.forward = types.MethodType(_decode_kernel_forward, module)
        for module in model.modules():
            if isinstance(module, Int8Linear) and module.qweight.device.type == "cpu":
                module.kernel = "openseason"
    model._decode_layout = True
    return len(changed)


def decode_forward(model: nn.Module):
    """What a decode step calls: the compiled forward after `compile_decoding`, else the model."""
    return getattr(model, "_compiled_step", None) or model


def compile_own(fn, **options):
    """torch.compile(fn, **options) through a copy of fn's code object. torch.compile keeps its graphs
    (and its limit of 8 recompiles) per code object, so two models compiled through the same function
    (GPT.forward, nn.Module's call) share one cache: the second, even at another thread count, runs the
    first one's code, and a few models exhaust the limit and fall back to eager without a word. Call
    this once per model: the model's graphs then live in a cache of their own."""
    code = fn.__code__.replace()   # a copy: a distinct code object
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(own, **options)


def compile_decoding(model: nn.Module, *, warm_up: bool = True) -> float:
    """Compile `model`'s decode step (see the module docstring); returns the seconds spent compiling
    (0.0 when it already was). Same results as eager up to float rounding order.

    warm_up    compile now, on short throwaway generations, instead of inside the first requests: one
               prompt (dynamo specializes a batch of 1), two prompts of different lengths (the padded
               path, with an attention mask) and two of one length (no mask); later batch sizes and
               cache lengths then reuse these graphs
    Inductor fixes the CPU thread count when it generates code: set torch's threads before this.
    Needs a C++ compiler on the CPU (inductor builds the step with it); without one this raises a
    clear error and the model stays eager.
    """
    if getattr(model, "_compiled_step", None) is not None:
        return 0.0
    cpu = model.embed.weight.device.type == "cpu"
    # dynamic=True: batch size and cache length are symbols from the start, so a running batch that
    # grows, shrinks or trims its cache does not recompile. fullgraph=True: a step that cannot be one
    # graph is an error here, not a step split into pieces that each recompile.
    def decode_step(*args, **kwargs):
        return model.forward(*args, **kwargs)
    model._compiled_step = compile_own(decode_step, dynamic=True, fullgraph=True,
                                       options={"cpp_wrapper": True} if cpu else None)
    if not warm_up:
        return 0.0
    from .engine import generate_ids
    from .sampling import SamplingParams

    start = time.perf_counter()
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    try:
        for prompts in ([[1, 2, 3]], [[1, 2, 3], [4, 5]], [[1, 2], [3, 4]]):
            generate_ids(model, prompts, params)
    except Exception as exc:
        model._compiled_step = None
        raise OpenseasonError(f"could not compile the decode step: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                              hint="torch.compile needs a C++ compiler (g++) on the CPU, and a step it can "
                                   "trace whole; decode without --compile") from exc
    return time.perf_counter() - start
