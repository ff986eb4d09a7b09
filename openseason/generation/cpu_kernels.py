"""Our own CPU kernels for the linear layers of a decode step (cpu_kernels.cpp), built on first use.

A decode step multiplies a few activation rows (one per sequence in the running batch) by every
weight matrix. With one row, torch's BLAS reads the weight near the memory-bandwidth limit. With 2-8
rows it switches to its matrix-matrix path, which repacks the whole weight on every call: at batch 8
pythia-70m's 50k-row output layer took 4x its batch-1 time on our CPU (BENCHMARKS.md, "Decoding"),
where the weight read should make it about the same. The kernels here read each weight element once
per call and multiply it with every activation row while it is in a register: fp32 weights stored
column-major (prepare_for_decoding's layout) for 1-16 rows, int8 weight-only rows with one scale per
output row (quantize.Int8Linear) for 1-16 rows, and int8 x int8 for int8-dynamic (AVX-512 VNNI, or
AVX2's byte products; quantize.Int8DynamicLinear, any number of rows). Each sums a row in the same order
whatever the number of rows, so a sequence decodes the same alone as in a batch. They run on torch's
own threads (at::parallel_for), except inside a decode step compiled ahead of time (set_step_threads):
there they run on a team of their own whose workers spin briefly for the next product, and torch's
small operations in between run on one thread, so a step no longer opens and closes an OpenMP region
per product. They are registered as torch ops (`openseason::decode_linear`, `decode_linear_int8`,
`decode_linear_int8_dynamic`) with shape functions, so torch.compile puts them in the compiled decode
step as calls without Python. What a kernel does not cover (more rows, other dtypes or devices) goes
to torch's product inside the op.

    available()                 True once built and loaded (builds on the first call; False if it cannot)
    status()                    "loaded from ..." / why not
    decode_linear(x, w, b, avoid_blas=False)
                                = F.linear(x, w, b); the kernel for fp32 w stored column-major and
                                1-16 rows; with avoid_blas (openseason.linear chose oneDNN over torch's
                                BLAS on this CPU) oneDNN for more than 16
    decode_linear_int8(x, q, scale, b) = F.linear(x, q * scale[:, None], b)
    decode_linear_int8_dynamic(x, q, scale, q.sum(1), b)
                                x's rows rounded to int8 too (quantize.Int8DynamicLinear), int32 sums
    decode_linear_bf16(x, w, b) = (x.bf16 @ w.T).float() + b (quantize.BF16Linear); the weight read at
                                half fp32's bytes: on CPUs with AVX-512 BF16, 1-32 rows against the
                                row-major w (vdpbf16ps); elsewhere 1-32 rows against a
                                column-major w, as fp32's
    decode_attention(q, k, v, mask, scale)
                                = F.scaled_dot_product_attention(q, k, v, mask, scale=scale, enable_gqa=...)
                                for one query per sequence (q [B, heads, 1, hs]) over the cache's keys
                                and values ([B, groups, keys, hs]), mask None, bool or additive fp32
                                (torch's flash kernel multiplies through MKL's generic code on AMD CPUs)
    bf16_weight_layout()        "row" or "column": the layout decode_linear_bf16's kernels read here
    set_step_threads(n)         from now on this thread's kernel calls run on the kernels' team of n
                                threads and torch's ops on one (n <= 1: as before); returns the old n

Building: torch.utils.cpp_extension with `-O3 -march=native` (AVX-512 or AVX2 + FMA where the CPU has
them, a plain loop otherwise; OPENSEASON_CPU_KERNELS_MARCH names another target, see target_arch), about 10 s once, into the user's cache (OPENSEASON_CACHE, else
$XDG_CACHE_HOME/openseason, else ~/.cache/openseason) under a name made of the source's hash, the
CPU's flags and the torch version, so a new source, CPU or torch builds anew. Each build runs in a
directory of its own and the library is renamed into place, so two first users never load a
half-built file and a build killed half way blocks nothing. It needs a C++ compiler and ninja; without them,
or with OPENSEASON_CPU_KERNELS=0, decoding uses torch's products (prepare_for_decoding's layout)
and `status()` says why. Sums run in another order than BLAS: results agree with F.linear to float32
rounding, not bit for bit.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..device import cpu_info
from ..errors import ConfigError
from ..fileio import keep_recent, mark_used, user_cache_dir

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
KERNEL_BUILDS_KEPT = 8            # built libraries kept in the user's cache (the least recently used go)
MAX_ROWS = 16                     # int8 kernels: as MAX_BATCH in the source; more rows go to torch's product
# Up to this many rows every kernel sums a row alike at every batch size (fp32 and int8: 16, as
# MAX_FP32_ROWS and MAX_BATCH in the source; bf16: 32). A decode batch larger than this goes through
# torch's products, whose bits depend on the batch.
BATCH_INVARIANT_ROWS = 16
_state: dict = {"tried": False, "ok": False, "status": "not built yet"}


def _cpu_flags() -> str:
    return cpu_info("flags") or platform.processor() or platform.machine()


def target_arch() -> str:
    """The -march the kernels are built for: OPENSEASON_CPU_KERNELS_MARCH, else "native" (this CPU).
    Another value builds for an older instruction set (x86-64-v3: AVX2 + FMA, the laptops and desktops
    without AVX-512), so one machine can run and test the code another CPU would get. A target with
    instructions this CPU lacks builds, and then stops the process with an illegal instruction."""
    arch = os.environ.get("OPENSEASON_CPU_KERNELS_MARCH", "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", arch):
        raise ConfigError(f"OPENSEASON_CPU_KERNELS_MARCH={arch!r} is not a -march name (x86-64-v3, native, ...)")
    return arch


def _build_name() -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _cpu_flags().encode(), target_arch().encode(), torch.__version__.encode(),
                 platform.python_version().encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"openseason_cpu_kernels_{digest.hexdigest()[:16]}"


def _register_shapes() -> None:
    """Shape functions for torch.compile's tracing (the ops have no autograd: decoding only)."""
    @torch.library.register_fake("openseason::decode_linear")
    def _(x, weight, bias, avoid_blas=False):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake("openseason::decode_linear_int8")
    def _(x, qweight, scale, bias):
        return x.new_empty(*x.shape[:-1], qweight.shape[0])

    @torch.library.register_fake("openseason::decode_linear_int8_dynamic")
    def _(x, qweight, wscale, wsum, bias):
        return x.new_empty(*x.shape[:-1], qweight.shape[0])

    @torch.library.register_fake("openseason::decode_linear_bf16")
    def _(x, weight, bias):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake("openseason::decode_attention")
    def _(q, k, v, mask, scale):
        return q.new_empty(*q.shape[:-1], v.shape[-1])


def _put_ninja_on_path() -> None:
    """torch's build runs `ninja` from PATH; the pip wheel's binary sits next to the interpreter of a
    virtual environment that was not activated (`.venv/bin/python ...`)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
        directory = ninja.BIN_DIR
    except (ImportError, AttributeError):
        directory = os.path.dirname(sys.executable)
    os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")


def _build_or_reuse() -> Path:
    """Load the built library from the cache, or build it in a directory of this process's own and
    rename the result into place. No lock: two first users both build and the second rename wins with
    the same file, and a build killed half way (kill -9) leaves only its own directory behind (torch's
    build lock, left by a killed build, made every later build wait forever)."""
    name = _build_name()
    root = user_cache_dir("cpu_kernels")
    library = root / f"{name}.so"
    if library.exists():
        try:
            torch.ops.load_library(str(library))
        except OSError:   # deleted meanwhile (another process trimmed the cache) or damaged: build it again
            pass
        else:
            mark_used(library)
            return library
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("build-*"):   # builds killed more than a day ago
        if time.time() - stale.stat().st_mtime > 86400:
            shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        load(name=name, sources=[str(SOURCE)], extra_cflags=["-O3", f"-march={target_arch()}", "-fopenmp"],
             extra_ldflags=["-fopenmp"], build_directory=str(build), is_python_module=False, verbose=False)
        os.replace(build / f"{name}.so", library)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    keep_recent(root, "openseason_cpu_kernels_*.so", KERNEL_BUILDS_KEPT)   # older sources, CPUs, torch versions
    return library


def available() -> bool:
    """Build (once per process; from the cache after the first time) and load the kernels."""
    if _state["tried"]:
        return _state["ok"]
    off = os.environ.get("OPENSEASON_CPU_KERNELS", "1") == "0"
    if not off:
        target_arch()   # a malformed OPENSEASON_CPU_KERNELS_MARCH is the user's error, not a reason to fall back
    _state["tried"] = True
    if off:
        _state["status"] = "off (OPENSEASON_CPU_KERNELS=0)"
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _state["status"] = f"not built: written for x86 CPUs, this is {platform.machine()}"
        return False
    try:
        library = _build_or_reuse()
        _register_shapes()
    except Exception as exc:  # no compiler, no ninja, a failed build: decoding stays on torch's products
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _state["status"] = f"not built ({type(exc).__name__}: {first[:200]}); decoding uses torch's products"
        return False
    _state["ok"] = True
    _state["status"] = f"loaded from {library} (-march={target_arch()})"
    return True


def status() -> str:
    return _state["status"]


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  avoid_blas: bool = False) -> torch.Tensor:
    return torch.ops.openseason.decode_linear(x, weight, bias, avoid_blas)


def decode_linear_int8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.openseason.decode_linear_int8(x, qweight, scale, bias)


def decode_linear_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.openseason.decode_linear_bf16(x, weight, bias)


def set_step_threads(threads: int) -> int:
    """From now on, this thread's kernel calls run on the kernels' own team of `threads` threads (0 or
    1: on torch's threads again), and torch's own operations on one thread (then again on as many as
    before); returns the previous value. For a decode step whose products are the kernels' (see
    cpu_kernels.cpp, KernelTeam); needs available()."""
    return torch.ops.openseason.set_step_threads(threads)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    return torch.ops.openseason.decode_attention(q, k, v, mask, scale)


def bf16_weight_layout() -> str:
    """How prepare_for_decoding stores bf16 weights for decode_linear_bf16 on this CPU: "row" (nn.Linear's
    own layout, where the build has AVX-512 BF16's dot product) or "column"."""
    return torch.ops.openseason.bf16_weight_layout() if available() else "column"


def decode_linear_int8_dynamic(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, qweight_sum: torch.Tensor,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.openseason.decode_linear_int8_dynamic(x, qweight, scale, qweight_sum, bias)
