"""The one timer of the benchmark scripts (run as `python benchmarks/NAME.py`, so this directory is on
sys.path): the best of `repeat` wall-clock runs, after one untimed warm-up run when asked."""
from __future__ import annotations

import time


def best_time(fn, repeat: int, warmup: bool = False) -> float:
    """Seconds of the fastest of `repeat` calls of `fn()` (the minimum: the run least disturbed by
    other processes, which matters on a shared machine)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> str:
    """What a benchmark header says of the CPU and of how our fp32 linear layers multiply on it: the
    CPU's model name, its core count, and openseason.linear's library (MKL runs AVX2 code on AMD CPUs,
    so the same torch multiplies at another speed there; BENCHMARKS.md rows depend on it)."""
    import os

    from openseason.device import cpu_info
    from openseason.linear import fp32_gemm

    return f"{cpu_info('model name') or 'unknown CPU'}, {os.cpu_count()} cores, our fp32 GEMM: {fp32_gemm()}"
