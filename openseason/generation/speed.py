"""Making a loaded model decode fast without changing what it computes.

Batch-1 decoding multiplies one activation row by every weight matrix, so it is bound by how fast
the weights stream from memory. On the x86 CPU we measured (AMD EPYC with AVX-512, torch's MKL) the
BLAS path for a row-major [out, in] weight with a long output dimension (the 50k-row lm_head above
all) reads it at about 11 GB/s, while the same product against column-major storage ([in, out],
seen through a transposed view) reads it at about 27 GB/s: 9.5 ms vs 3.8 ms for Pythia's lm_head. `prepare_for_decoding`
re-stores such weights in place: same values, same Parameter objects and shapes, so training,
saving (save_checkpoint makes tensors contiguous) and PEFT injection are unaffected; only the memory
layout changes. On Linux it also moves the CPU weights into memory backed by transparent huge pages
(device.huge_page_buffer): a step reads every weight, and with 4 KB pages that is a TLB miss every
4 KB (llama-6x512 decoded about 5% faster in huge pages on the AMD EPYC).

`compile_decoding` removes what is left between those matrix products: at batch 1 a small model's
step is about thirty small operations per layer (norms, rotary, cache writes, attention, residual
adds), each a separate eager dispatch of a few microseconds. It hands the decode step (one new token
per row, KV cache growing) to torch.compile with dynamic shapes, so one graph serves every batch size
and cache length, and on the CPU with inductor's C++ wrapper, so a step makes no Python calls per
operation. Prefill (many tokens at once, matrix-bound) stays eager. On the CPU it also builds two
steps ahead of time (`AheadOfTimeStep`: torch.export + AOTInductor, the model's weights shared, not
copied): one row without a mask, and 2 or more rows with a mask and positions. Text-only batches call
them without dynamo's per-step frame evaluation and guards, the part of a step that runs with caches
the weights have just flushed. See BENCHMARKS.md for the speed-ups.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import threading
import time
import types
import warnings
from typing import Optional

import torch
import torch.nn as nn

from ..errors import OpenseasonError
from ..fileio import atomic_open, keep_recent, mark_used, user_cache_dir
from ..linear import fp32_gemm, linear
from ..model import CausalSelfAttention


def _wants_column_major(module: nn.Linear, every_shape: bool) -> bool:
    weight = module.weight
    # fp32 nn.Linear only (BF16Linear weights are re-stored for our kernels in prepare_for_decoding; for
    # fp16 torch's column-major path was 13x slower).
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2
            or not weight.is_contiguous()):
        return False
    out_features, in_features = weight.shape
    # Measured on an AMD EPYC (AVX-512, MKL) container: for torch's products column-major wins when
    # out > in (qkv, MLP up, lm_head), loses slightly for the down projection (out < in), ties for square
    # matrices. Our kernels (every_shape) want every weight column-major: at batch 8 they multiply
    # pythia-70m's down projections 1.05-1.4x faster than torch on row-major, and batch 1 stays with
    # torch, 3-9% slower on those two shapes column-major (under 1% of a step).
    return out_features > in_features or every_shape


# Tensors smaller than this stay where they are: a huge page is 2 MB, and norms and biases are read
# from cache anyway.
HUGE_PAGE_MIN_BYTES = 256 * 1024
_ALIGN = 4096


def _restore_weights(model: nn.Module, column_major: set[int]) -> int:
    """Re-store the model's CPU tensors: those in `column_major` (ids) as column-major copies, and
    every weight of HUGE_PAGE_MIN_BYTES or more in one huge-page buffer where Linux provides one (the
    rest of the column-major ones with torch's allocator). Same Parameter and buffer objects, same
    values; returns how many bytes went into huge pages."""
    from ..device import huge_page_buffer

    def dense(t: torch.Tensor) -> bool:   # row- or column-major, with nothing else in its storage
        return (t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
                and (t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())))

    seen: set[int] = set()
    tensors = []
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in seen and t.device.type == "cpu" and not t.is_sparse:
            seen.add(id(t))
            tensors.append(t)
    placed = [t for t in tensors if dense(t) and t.numel() * t.element_size() >= HUGE_PAGE_MIN_BYTES]
    offsets, total = {}, 0
    for t in placed:
        offsets[id(t)] = total
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    arena = huge_page_buffer(total) if placed else None
    moved = 0
    with torch.no_grad():
        for t in tensors:
            col = id(t) in column_major or not t.is_contiguous()   # the layout it ends in
            if arena is not None and id(t) in offsets:
                nbytes = t.numel() * t.element_size()
                flat = arena[offsets[id(t)]:offsets[id(t)] + nbytes].view(t.dtype)
                home = flat.view(t.shape[1], t.shape[0]).t() if col else flat.view(t.shape)
                home.copy_(t)
                t.data = home
                moved += nbytes
            elif id(t) in column_major:
                t.data = t.data.t().contiguous().t()
    return moved


def _decode_kernel_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # Training through a decoding-prepared model still gets autograd: the kernels have none.
    if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return linear(x, self.weight, self.bias)
    return torch.ops.openseason.decode_linear(x, self.weight, self.bias, fp32_gemm() == "onednn")


def _decode_kernel_attend(self: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask,
                          extras=None) -> torch.Tensor:
    # One query per sequence (a decode step) without autograd: our kernel (cpu_kernels.decode_attention);
    # the rest (prefill, training, other dtypes) is the model's own attention.
    if (q.shape[2] == 1 and q.dtype == torch.float32 and q.device.type == "cpu" and not extras
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and (isinstance(mask, str) or (isinstance(mask, torch.Tensor) and mask.dtype in (torch.bool, torch.float32)))):
        return torch.ops.openseason.decode_attention(q, k, v, None if isinstance(mask, str) else mask,
                                                     self.softmax_scale)
    return type(self).attend(self, q, k, v, mask, extras)


def prepare_for_decoding(model: nn.Module) -> int:
    """Re-store fp32 CPU linear weights in the layout that batch-1 decoding reads fastest, and, where
    our CPU kernels build (generation.cpu_kernels), route those layers, int8 weight-only layers and
    bf16 layers (in the layout cpu_kernels.bf16_weight_layout() names) through them (fp32 for 1-16 rows;
    bf16 for 1-32 rows in either layout; int8 for 1-16), and attention of one query per sequence over
    the cache (fp32, cpu_kernels.decode_attention);
    move the CPU weights into huge pages where Linux provides them; returns how many fp32 weights were
    re-stored. Idempotent; a no-op on GPUs. Tied weights (lm_head = embed) keep their row-major rows
    for the embedding lookup."""
    if getattr(model, "_decode_layout", False):
        return 0
    from . import cpu_kernels
    from .quantize import BF16Linear, Int8Linear

    tied = set()
    embed = getattr(model, "embed", None)
    if embed is not None:
        tied.add(id(embed.weight))
    on_cpu = any(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))
    kernels = on_cpu and cpu_kernels.available()
    changed = [module for module in model.modules()
               if isinstance(module, nn.Linear) and id(module.weight) not in tied
               and _wants_column_major(module, kernels)]
    # bf16 weights through our kernels: row-major as they are where the kernels have AVX-512 BF16's dot
    # product, else column-major (cpu_kernels.col_rows), 1-32 rows either way. Longer inputs (prefill)
    # stay with torch's bf16 product, on the same tensor.
    bf16 = [module for module in model.modules()
            if isinstance(module, BF16Linear) and module.weight.device.type == "cpu"
            and module.weight.is_contiguous()] if kernels else []
    bf16_column_major = bool(bf16) and cpu_kernels.bf16_weight_layout() == "column"
    if on_cpu:
        model._huge_page_bytes = _restore_weights(
            model, {id(module.weight) for module in changed}
            | ({id(module.weight) for module in bf16} if bf16_column_major else set()))
    for module in bf16:
        module.kernel = "openseason"
    if kernels:
        for module in changed:
            module.forward = types.MethodType(_decode_kernel_forward, module)
        for module in model.modules():
            if isinstance(module, Int8Linear) and module.qweight.device.type == "cpu":
                module.kernel = "openseason"
            # attention of one query over the cache, unless an injected method (an adapter) owns it
            if isinstance(module, CausalSelfAttention) and "attend" not in vars(module):
                module.attend = types.MethodType(_decode_kernel_attend, module)
    model._decode_layout = True
    return len(changed)


def decode_forward(model: nn.Module):
    """What a decode step calls: the compiled forward after `compile_decoding`, else the model."""
    return getattr(model, "_compiled_step", None) or model


def model_fingerprint(model: nn.Module) -> tuple:
    """What a captured step depends on besides its inputs: every module (object, class, forward hooks
    and plain public attributes such as `training` or a kernel choice) and every parameter and buffer
    (object, storage address, shape, strides, dtype). Equal fingerprints mean the model computes as it
    did at capture; an adapter injected, a module or weight replaced, or a weight re-stored changes it."""
    parts = []
    for name, module in model.named_modules(remove_duplicate=False):
        settings = tuple(sorted((key, value) for key, value in vars(module).items()
                                if not key.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))))
        tensors = tuple((key, id(t), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
                        for key, t in itertools.chain(module._parameters.items(), module._buffers.items())
                        if t is not None)
        hooks = (len(module._forward_hooks), len(module._forward_pre_hooks), id(module.__dict__.get("forward")))
        parts.append((name, id(module), type(module), settings, tensors, hooks))
    return tuple(parts)


class _DecodeStep(nn.Module):
    """The decode step with tensor inputs only (what torch.export and AOTInductor take): the new tokens
    [rows, 1], empty [length, 0] and [choosable, 0] tensors whose first dimensions carry the cache length
    and how many of the vocabulary's ids may be chosen, then (a batch step only) the attention mask
    [rows, length + 1] (1 for each row's real positions, 0 for its left padding) and each row's rotary
    position [rows, 1], then every layer's keys then values [rows, groups, capacity, head_size], written
    in place at `length`. Returns the logits [rows, 1, vocab] and the greedy choices [rows, 1] (the argmax
    over the first `choosable` logits): a greedy row's next input, with no Python-side argmax or new
    tensor between two steps. Rows of one length pass a mask of ones: the graph then computes exactly
    what the graph without a mask computes (adding 0 to a score changes nothing)."""

    def __init__(self, model: nn.Module, batch: bool):
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, ids: torch.Tensor, length_carrier: torch.Tensor, choosable_carrier: torch.Tensor,
                *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..model import KVCache

        mask, positions, keys_values = (inputs[0], inputs[1], inputs[2:]) if self.batch else (None, None, inputs)
        n = len(keys_values) // 2
        cache = KVCache.of(keys_values[:n], keys_values[n:], length_carrier.shape[0])
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions, last_only=True)
        # ids past `choosable` masked rather than sliced off: with the rows a symbol, the slice made export
        # guard on choosable != vocabulary
        last = logits[:, -1]
        beyond = torch.arange(last.shape[-1], device=last.device) >= choosable_carrier.shape[0]
        return logits, last.masked_fill(beyond, float("-inf")).argmax(-1, keepdim=True)


# The most rows a batch step is traced for; a larger batch (generate_ids with thousands of prompts)
# steps through torch.compile's graph.
MAX_BATCH_STEP_ROWS = 1024


class AheadOfTimeStep:
    """A decode step compiled ahead of time: `torch.export` traces it once with the cache length and
    capacity (and, for a batch, the number of rows) as symbols, AOTInductor compiles the graph into a
    shared library that reads the model's own weights (user-managed constants: nothing copied), and a
    step is one call into that library.

    torch.compile's step pays, at every call, for dynamo's frame evaluation and guards and the Python
    wrappers around the compiled graph: 0.1 ms with warm caches, but 0.4-0.5 ms right after a step's
    weights have streamed through the caches, which is how every decode step runs (see BENCHMARKS.md).
    The library call skips all of that. What guards did (is this still the model that was traced?) is
    `model_fingerprint`, checked when sequences join the batch (`ahead_of_time_steps`), not per step.
    Two are built: one row with no mask (`batch` False), and 2 or more rows with a mask and positions
    (`batch` True). Either serves only rows without per-row extras (images); those steps go through
    torch.compile's graph."""

    def __init__(self, model: nn.Module, compiled, constants: dict, capacity: int, batch: bool):
        self.compiled = compiled          # torch._inductor's AOTICompiledModel (keeps the library loaded)
        # The library holds raw pointers to these; aliases keep their memory alive even if the model's
        # tensors are later re-pointed (the fingerprint then stops the step from being used).
        self.constants = {fqn: t.detach() for fqn, t in constants.items()}
        self.run = compiled.loader.boxed_run
        self.capacity = capacity
        self.batch = batch
        self.dtype = model.embed.weight.dtype
        self.fingerprint = model_fingerprint(model)
        from . import cpu_kernels

        self.kernel_team = cpu_kernels.set_step_threads if cpu_kernels.available() else None

    def fits(self, cache) -> bool:
        first = cache.k[0]
        rows = 2 <= cache.batch_size <= MAX_BATCH_STEP_ROWS if self.batch else cache.batch_size == 1
        return (rows and not cache.extras and 1 <= cache.length < cache.max_len <= self.capacity
                and first.dtype == self.dtype and first.device.type == "cpu" and first.is_contiguous())

    def __call__(self, ids: torch.Tensor, cache, choosable: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: (logits [rows, 1, vocab], greedy choices [rows, 1]); `choosable` is an empty [n, 0]
        tensor, n the number of leading vocabulary ids that may be chosen (2 up to the vocabulary size).
        A batch step also takes the mask [rows, length + 1] and the positions [rows, 1]."""
        extra = [mask, positions] if self.batch else []
        # Off the main thread (the server's engine thread), the step's products run on the kernels' own
        # team and torch's small operations on one thread (cpu_kernels.set_step_threads). There, torch's
        # OpenMP runtime already has the main thread's team: with more OpenMP threads than cores it
        # stops spinning between regions, and a step opens one region per product. Two-thread decoding
        # from a second thread on the 2-core AMD EPYC, OpenMP -> the team: llama-6x512 fp32 93 -> 203
        # tok/s, int8-dynamic 145 -> 411, bf16 123 -> 296, batch 8 599 -> 897; pythia-70m 100 -> 149.
        # On the main thread OpenMP was 5-20% ahead of the team (attention then runs on two threads).
        threads = (torch.get_num_threads() if self.kernel_team is not None
                   and threading.current_thread() is not threading.main_thread() else 1)
        if threads > 1:
            previous = self.kernel_team(threads)
        try:
            logits, greedy = self.run([ids, torch.empty(cache.length, 0), choosable, *extra, *cache.k, *cache.v])
        finally:
            if threads > 1:
                self.kernel_team(previous)
        cache.length += 1
        return logits, greedy

    def __deepcopy__(self, memo):   # a copied model has weights of its own: it must not run this one's
        return None


# Built steps kept in the user's cache (about 2 MB each for small models; one-row and batch steps, one
# per model shape, thread count and weight layout); the least recently used beyond this are deleted.
DECODE_STEPS_KEPT = 64


def export_one_row_step(model: nn.Module) -> AheadOfTimeStep:
    """Trace and compile `model`'s one-row decode step (see AheadOfTimeStep); tens of seconds for a
    small model. CPU only; raises on a model whose step cannot be exported."""
    return _export_step(model, batch=False)


def export_batch_step(model: nn.Module) -> AheadOfTimeStep:
    """The same for steps of 2 or more rows, with an attention mask and positions (`_DecodeStep`)."""
    return _export_step(model, batch=True)


def _export_step(model: nn.Module, batch: bool) -> AheadOfTimeStep:
    import tempfile

    import torch._inductor

    capacity = model.context_length
    if capacity < 4:
        raise ValueError(f"a context of {capacity} positions is too short to trace a step with a symbolic length")
    rows = 2 if batch else 1
    step = _DecodeStep(model, batch)
    cache = model.new_kv_cache(rows, 4)
    vocab = model.config.padded_vocab_size
    example = [torch.zeros(rows, 1, dtype=torch.long), torch.empty(2, 0), torch.empty(vocab - 1, 0)]
    length = torch.export.Dim("length", min=1, max=capacity - 1)
    slots = torch.export.Dim("capacity", min=3, max=capacity)
    choosable = torch.export.Dim("choosable", min=2, max=vocab)
    count = torch.export.Dim("rows", min=2, max=MAX_BATCH_STEP_ROWS) if batch else None
    inputs = [{0: count, 2: slots} if batch else {2: slots} for _ in range(2 * model.config.n_layer)]
    if batch:
        example += [torch.ones(rows, 3, dtype=torch.long), torch.full((rows, 1), 2)]
        inputs[:0] = [{0: count, 1: length + 1}, {0: count}]   # the mask, the positions
    example += [*cache.k, *cache.v]
    shapes = {"ids": {0: count} if batch else None, "length_carrier": {0: length},
              "choosable_carrier": {0: choosable}, "inputs": tuple(inputs)}
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own deprecation notice from inside export/packaging, not something a user can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.export.export(step, tuple(example), dynamic_shapes=shapes, strict=False)
        # The package holds code only (the weights stay the model's), so one built for the same graph,
        # weight layouts, threads, CPU and torch serves again: a model loaded a second time skips the
        # C++ build (about 10 s even for a tiny model).
        cached = user_cache_dir("decode_steps", f"{_package_key(program)}.pt2")
        compiled = None
        if cached.exists():
            try:
                compiled = torch._inductor.aoti_load_package(str(cached))
            except Exception:   # a damaged file: build it again below
                compiled = None
            else:
                mark_used(cached)
        if compiled is None:
            with tempfile.TemporaryDirectory(prefix="openseason-step-") as folder:
                path = torch._inductor.aoti_compile_and_package(
                    program, package_path=f"{folder}/step.pt2",
                    inductor_configs={"aot_inductor.package_constants_in_so": False})
                compiled = torch._inductor.aoti_load_package(path)
                with contextlib.suppress(OSError):   # a read-only cache only costs the next load a build
                    with atomic_open(cached, "wb") as handle, open(path, "rb") as built:
                        shutil.copyfileobj(built, handle)
                    keep_recent(cached.parent, "*.pt2", DECODE_STEPS_KEPT)
    constants = {}
    for fqn in compiled.get_constant_fqns():
        owner, _, attr = fqn.rpartition(".")
        constants[fqn] = getattr(step.get_submodule(owner), attr)
    compiled.load_constants(constants, check_full_update=True, user_managed=True)
    return AheadOfTimeStep(model, compiled, constants, capacity, batch)


def _package_key(program) -> str:
    """What a built step depends on: the traced graph and its symbol ranges, every constant's shape,
    strides and dtype, the thread count inductor generated code for, the CPU and the torch build."""
    from .cpu_kernels import _cpu_flags

    digest = hashlib.sha256()
    layouts = sorted((name, tuple(t.shape), t.stride(), str(t.dtype))
                     for name, t in itertools.chain(program.state_dict.items(), program.constants.items()))
    for part in (program.graph_module.code, str(program.range_constraints), repr(layouts),
                 str(torch.get_num_threads()), _cpu_flags(), torch.__version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def ahead_of_time_steps(model: nn.Module) -> tuple["AheadOfTimeStep | None", "AheadOfTimeStep | None"]:
    """The model's ahead-of-time (one-row, batch) steps while the model is still the one they traced;
    (None, None) otherwise (and the steps are dropped, with a warning: decoding goes on through
    torch.compile's graph, which re-traces itself)."""
    one = getattr(model, "_ahead_of_time_step", None)
    many = getattr(model, "_ahead_of_time_batch_step", None)
    built = [step for step in (one, many) if step is not None]
    if not built:
        return None, None
    if model_fingerprint(model) != built[0].fingerprint:
        model._ahead_of_time_step = model._ahead_of_time_batch_step = None
        warnings.warn("the model changed after its decode step was compiled ahead of time (a module, weight or "
                      "setting was replaced); decoding goes on through torch.compile's graph", stacklevel=2)
        return None, None
    return one, many


def compile_own(fn, **options):
    """torch.compile(fn, **options) through a copy of fn's code object. torch.compile keeps its graphs
    (and its limit of 8 recompiles) per code object, so two models compiled through the same function
    (GPT.forward, nn.Module's call) share one cache: the second, even at another thread count, runs the
    first one's code, and a few models exhaust the limit and fall back to eager without a word. Call
    this once per model: the model's graphs then live in a cache of their own."""
    code = fn.__code__.replace()   # a copy: a distinct code object
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(own, **options)


def compile_decoding(model: nn.Module, *, warm_up: bool = True, ahead_of_time: bool = True) -> float:
    """Compile `model`'s decode step (see the module docstring); returns the seconds spent compiling
    (0.0 when it already was). Same results as eager up to float rounding order.

    warm_up        compile now, on short throwaway generations, instead of inside the first requests: one
                   prompt (dynamo specializes a batch of 1; skipped where the one-row step serves it),
                   two prompts of different lengths (the padded path, with an attention mask) and two of
                   one length (no mask); later batch sizes and cache lengths then reuse these graphs.
                   Where the ahead-of-time steps serve them, these run (and check) those steps instead.
    ahead_of_time  on the CPU, also build the one-row and the batch step ahead of time
                   (`AheadOfTimeStep`: no dynamo at each step; about three times the compile time, once:
                   built steps are kept on disk). Where one cannot be built this warns and its batches
                   stay with torch.compile's graph.
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
    start = time.perf_counter()
    if cpu and ahead_of_time:
        for attribute, export, what in (("_ahead_of_time_step", export_one_row_step, "one-row"),
                                        ("_ahead_of_time_batch_step", export_batch_step, "batch")):
            try:
                setattr(model, attribute, export(model))
            except Exception as exc:
                warnings.warn(f"the {what} decode step could not be compiled ahead of time ({type(exc).__name__}: "
                              f"{_first_line(exc)}); those steps decode through torch.compile's graph", stacklevel=2)
    if warm_up:
        from .engine import generate_ids
        from .sampling import SamplingParams

        # A text-only model with ahead-of-time steps never runs torch.compile's graph for them unless the
        # model changes later (then it is compiled on first use); a multimodal one does (rows with images).
        # With them the warm-up batches run (and check) the built steps.
        text_only = getattr(model, "media", None) is None
        batches = [[[1, 2, 3], [4, 5]], [[1, 2], [3, 4]]]   # rows of two lengths (a mask), then of one
        if getattr(model, "_ahead_of_time_step", None) is None or not text_only:
            batches.insert(0, [[1, 2, 3]])
        params = SamplingParams(max_new_tokens=3, ignore_eos=True)
        try:
            for prompts in batches:
                generate_ids(model, prompts, params)
        except Exception as exc:
            model._compiled_step = None
            model._ahead_of_time_step = model._ahead_of_time_batch_step = None
            raise OpenseasonError(f"could not compile the decode step: {type(exc).__name__}: "
                                  f"{_first_line(exc)}",
                                  hint="torch.compile needs a C++ compiler (g++) on the CPU, and a step it can "
                                       "trace whole; decode without --compile") from exc
    return time.perf_counter() - start


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
