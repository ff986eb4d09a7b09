"""Connecting to Ray and running tasks: `connect` (a running cluster, or a local one) and `run_tasks`.

Tasks are plain functions of this package run with one CPU each; at most `workers` are in flight at
a time. A task's user errors (`OpenseasonError`: a malformed row at file:line) come back as values
and are raised in the driver as they are, so the CLI prints them like the single-process path does.
Each task also reports its CPU time and its worker process's peak resident memory, which the stages
report (per worker for the memory).
"""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from typing import Callable, Iterator, Optional, Sequence

from ...errors import OpenseasonError

INSTALL_HINT = "install it with `pip install openseason[ray]`"


def import_ray():
    try:
        import ray
    except ImportError:
        raise OpenseasonError("--engine ray needs the `ray` package", hint=INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def connect(address: Optional[str] = None, workers: Optional[int] = None) -> Iterator["Cluster"]:
    """A Cluster on the running Ray instance: the one this process already joined, the one at
    `address` (HOST:PORT), or with "auto" (the default) the running cluster, else a local one with
    `workers` CPUs (all of this machine's by default) that is shut down at the end."""
    ray = import_ray()
    started = False
    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and address != joined:
            raise OpenseasonError(f"this process already joined the Ray cluster at {joined}, not {address}",
                                  where="--address", hint="leave --address out, or use a new process")
    else:
        address = address or "auto"
        common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address != "auto":
            _check_reachable(address)
        try:
            ray.init(address=address, **common)
        except ConnectionError:
            if address != "auto":
                raise _unreachable(address) from None
            ray.init(num_cpus=workers or os.cpu_count() or 1, **common)
            started = True
    try:
        yield Cluster(ray, workers)
    finally:
        if started:
            ray.shutdown()


def _unreachable(address: str) -> OpenseasonError:
    return OpenseasonError(f"no Ray cluster answers at {address}", where="--address",
                           hint="start one with `ray start --head --port PORT`, or pass --address auto")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a head that does not answer (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OpenseasonError(f"expected 'auto' or HOST:PORT, not {address!r}", where="--address")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError:
        raise _unreachable(address) from None


def _call(fn: Callable, args: tuple):
    """The body of every task: (result or the user error, worker pid, worker peak RSS in bytes, CPU
    seconds the task used)."""
    cpu = time.process_time()
    try:
        result = fn(*args)
    except OpenseasonError as exc:
        result = exc
    return (result, os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            time.process_time() - cpu)


class Cluster:
    """Runs task functions on the cluster; remembers each worker process's peak memory."""

    def __init__(self, ray, workers: Optional[int]):
        self.ray = ray
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(cpus, 1)
        self.peak_rss: dict[int, int] = {}
        self.cpu_seconds = 0.0
        self._remote = ray.remote(num_cpus=1, max_retries=3)(_call)

    def run(self, fn: Callable, jobs: Sequence[tuple], label: str = "", progress: bool = False) -> list:
        """[fn(*job) for job in jobs] run as Ray tasks, `workers` at a time; results in job order."""
        ray = self.ray
        results: list = [None] * len(jobs)
        pending: dict = {}
        bar = _bar(progress, label, len(jobs))
        try:
            todo = iter(enumerate(jobs))
            while True:
                while len(pending) < self.workers:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    pending[self._remote.remote(fn, nxt[1])] = nxt[0]
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    value, pid, rss, cpu = ray.get(ref)
                    if isinstance(value, OpenseasonError):
                        raise value
                    results[pending.pop(ref)] = value
                    self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)
                    self.cpu_seconds += cpu
                    bar and bar.advance(bar.task_ids[0])
        finally:
            # tasks still in flight after an error are left to finish: they only write their own
            # pieces atomically (a rerun reuses them), and force-cancelling a task whose reply is
            # arriving crashes the driver in Ray 2.60 (a failed check in TaskManager::CompletePendingTask)
            if bar:
                bar.stop()
        return results

    def stats(self) -> dict:
        """What the run used: workers, the tasks' CPU seconds, and each worker process's peak memory (MiB)."""
        return {"name": "ray", "workers": self.workers, "task_cpu_seconds": round(self.cpu_seconds, 3),
                "peak_rss_mib_per_worker": sorted(round(v / 2**20, 1) for v in self.peak_rss.values())}


def _bar(enabled: bool, label: str, total: int):
    if not enabled or not total:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task(label, total=total)
    bar.start()
    return bar
