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
